"""hmr_fast: human mesh recovery (HMR) with the SMPL math as fused Triton kernels."""
from .body import SMPL, SMPLOutput, load_model_file

__version__ = "0.1.0"
__all__ = ["SMPL", "SMPLOutput", "Predictor", "load_model_file", "__version__"]


def __getattr__(name):
    if name == "Predictor":  # imported on first use: `import hmr_fast` stays free of OpenCV
        from .infer import Predictor

        return Predictor
    raise AttributeError(f"module 'hmr_fast' has no attribute {name!r}")

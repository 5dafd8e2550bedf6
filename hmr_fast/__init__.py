"""hmr_fast: human mesh recovery (HMR) with the SMPL math as fused Triton kernels."""
from .body import SMPL, SMPLOutput, load_model_file

__version__ = "0.1.0"
__all__ = ["SMPL", "SMPLOutput", "load_model_file", "__version__"]

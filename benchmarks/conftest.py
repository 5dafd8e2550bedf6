"""Benchmarks load the tests' fixtures (random models, the float32-exact mannequin)."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import mannequin_data, mannequin_smplx_dir  # noqa: E402,F401

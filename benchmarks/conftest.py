"""Benchmarks reuse the tests' fixtures (random models, the float32-exact mannequin), and
its switch to the Triton interpreter when there is no CUDA.

tests/conftest.py is loaded under its own module name: a plain `from conftest import ...`
here would import this file itself.
"""
import importlib.util
import os
import sys

_TESTS = os.path.join(os.path.dirname(__file__), "..", "tests")
sys.path.insert(0, _TESTS)
_spec = importlib.util.spec_from_file_location("hmr_fast_tests_conftest", os.path.join(_TESTS, "conftest.py"))
_tests_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests_conftest)
one_torch_thread = _tests_conftest.one_torch_thread
mannequin_data = _tests_conftest.mannequin_data
mannequin_smplx_dir = _tests_conftest.mannequin_smplx_dir

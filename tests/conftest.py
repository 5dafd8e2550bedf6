"""Shared fixtures: random SMPL-format models, the mannequin, and smplx on the same files.

No CUDA here (CI): Triton kernels run on CPU tensors under its interpreter, which must be
switched on before triton is first imported.

Every random input is reproducible and independent of the order tests run in: before each
test's setup and again before its body, the global generators of torch, numpy and `random`
are seeded with that test's own seed (`per_test_seed`, from its node id; the `seed` fixture hands
it to tests that build their own generators). Hypothesis runs derandomized, without an
example database (the "hmr_fast" profile, loaded here; HMR_FAST_FUZZ_SEED in fuzzing.py
makes the fuzz tests random but repeatable).
"""
import dataclasses
import os
import pickle
import random
import zlib

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import settings

settings.register_profile("hmr_fast", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile("hmr_fast")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hmr_fast.body.model_data import SMPL_PARENTS, SMPLModelData  # noqa: E402


def per_test_seed(nodeid: str) -> int:
    """A test's own fixed seed: the same every run, whatever ran before it."""
    return zlib.crc32(nodeid.encode())




def _seed_everything(item) -> None:
    seed = per_test_seed(item.nodeid)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _seed_everything(item)  # fixtures built for this test (any scope) draw from a known state


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    _seed_everything(item)  # the body too, whichever fixtures were built or cached before it


@pytest.fixture
def seed(request) -> int:
    """This test's fixed seed (printed, for a failing run), for generators it builds itself."""
    value = per_test_seed(request.node.nodeid)
    print(f"seed {value}")
    return value


def random_model_data(num_vertices=6890, num_betas=10, seed=None, k=4) -> SMPLModelData:
    """A valid SMPL-format model with random arrays: from `seed`, or when None from numpy's
    global generator (seeded per test), so calls in one test give different models and every
    run the same ones.

    Values are rounded to float32 because smplx casts every array to float32 on load;
    with float32-exact data, smplx and we compute from identical numbers.
    """
    rng = np.random.default_rng(seed if seed is not None else np.random.randint(2**31))
    V = num_vertices
    weights = rng.random((V, 24))
    weights[weights < np.sort(weights, axis=1)[:, [-k]]] = 0.0
    weights /= weights.sum(1, keepdims=True)
    J_regressor = np.zeros((24, V))
    for j in range(24):
        ring = rng.choice(V, size=min(8, V), replace=False)
        J_regressor[j, ring] = rng.random(len(ring)) + 0.1
    J_regressor /= J_regressor.sum(1, keepdims=True)
    return float32_exact(SMPLModelData(
        v_template=rng.normal(size=(V, 3)) * 0.3,
        faces=rng.integers(0, V, size=(2 * V - 4, 3)),
        J_regressor=J_regressor,
        parents=np.array(SMPL_PARENTS, dtype=np.int64),
        weights=weights,
        shapedirs=rng.normal(size=(V, 3, num_betas)) * 0.01,
        posedirs=rng.normal(size=(V, 3, 207)) * 0.005,
        source="random",
    ))


def float32_exact(data: SMPLModelData) -> SMPLModelData:
    """The same model with every float array rounded to float32 (what smplx sees)."""
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    return dataclasses.replace(
        data, v_template=f32(data.v_template), J_regressor=f32(data.J_regressor),
        weights=f32(data.weights), shapedirs=f32(data.shapedirs), posedirs=f32(data.posedirs),
        extra_regressors={k: f32(v) for k, v in data.extra_regressors.items()})


def write_smplx_model_dir(data: SMPLModelData, root) -> str:
    """Write `data` as root/smpl/SMPL_NEUTRAL.pkl in the official layout smplx.create reads."""
    os.makedirs(os.path.join(root, "smpl"), exist_ok=True)
    kintree = np.array([data.parents, np.arange(24)], dtype=np.int64)
    kintree[0, 0] = 4294967295
    payload = dict(v_template=data.v_template, f=data.faces.astype(np.uint32),
                   J_regressor=scipy.sparse.csc_matrix(data.J_regressor), kintree_table=kintree,
                   weights=data.weights, shapedirs=data.shapedirs, posedirs=data.posedirs)
    with open(os.path.join(root, "smpl", "SMPL_NEUTRAL.pkl"), "wb") as f:
        pickle.dump(payload, f, protocol=2)
    return str(root)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, restored after (timings and CPU training runs are
    steadier on the shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mannequin_data() -> SMPLModelData:
    """The built-in mannequin, rounded to float32 so smplx sees exactly the same numbers."""
    from hmr_fast.body.mannequin import build_mannequin

    return float32_exact(build_mannequin())


@pytest.fixture(scope="session")
def mannequin_smplx_dir(mannequin_data, tmp_path_factory) -> str:
    return write_smplx_model_dir(mannequin_data, tmp_path_factory.mktemp("mannequin"))

"""The fuzz tests' shared budget (test_fuzz_*.py).

CI runs HMR_FAST_FUZZ_EXAMPLES (default 60) derandomised examples per property: the same
inputs every run. HMR_FAST_FUZZ_EXAMPLES=2000 runs more; HMR_FAST_FUZZ_SEED=N makes a run
random but repeatable (apply SEEDED to a test as well as FUZZ).
"""
import os

from hypothesis import HealthCheck, seed, settings

EXAMPLES = int(os.environ.get("HMR_FAST_FUZZ_EXAMPLES", "60"))
SEED = os.environ.get("HMR_FAST_FUZZ_SEED")  # unset: derandomized (the same examples every run)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)
SEEDED = seed(int(SEED)) if SEED is not None else (lambda test: test)

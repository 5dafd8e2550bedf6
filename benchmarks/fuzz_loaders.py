"""A long fuzzing run of the loaders of untrusted bytes (SMPL model files, checkpoints).

    python benchmarks/fuzz_loaders.py                      # 2000 examples per property, random seed
    python benchmarks/fuzz_loaders.py --examples 20000 --seed 7 -k model
    python benchmarks/fuzz_loaders.py --minutes 30         # repeat with fresh seeds for 30 minutes

It runs tests/test_fuzz_model_files.py (the same properties CI runs with 60 derandomized
examples) with more examples and a seed, printed so a failure can be replayed with
HMR_FAST_FUZZ_SEED=SEED HMR_FAST_FUZZ_EXAMPLES=N. Each property runs in a fresh pytest process,
so a crash of the interpreter (a segfault in a C reader) is reported as that, with its seed.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "test_fuzz_model_files.py"


def run_once(examples: int, seed: int, select: str) -> int:
    env = dict(os.environ, HMR_FAST_FUZZ_EXAMPLES=str(examples), HMR_FAST_FUZZ_SEED=str(seed))
    command = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS),
               "--hypothesis-show-statistics"]
    if select:
        command += ["-k", select]
    print(f"== seed {seed}, {examples} examples: HMR_FAST_FUZZ_SEED={seed} HMR_FAST_FUZZ_EXAMPLES={examples} "
          f"pytest {TESTS.relative_to(ROOT)}" + (f" -k '{select}'" if select else ""), flush=True)
    rc = subprocess.call(command, cwd=ROOT, env=env)
    if rc < 0 or rc > 128:
        print(f"!! the interpreter crashed (signal {abs(rc) % 128}) with seed {seed}", flush=True)
    return rc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per property and round")
    parser.add_argument("--seed", type=int, help="first seed (default: random)")
    parser.add_argument("--minutes", type=float, default=0, help="keep running rounds with new seeds this long")
    parser.add_argument("-k", dest="select", default="", help="pytest -k expression (e.g. 'model', 'checkpoint')")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    end = time.monotonic() + args.minutes * 60
    worst = 0
    while True:
        rc = run_once(args.examples, seed, args.select)
        worst = worst or rc
        if time.monotonic() >= end:
            return worst
        seed += 1


if __name__ == "__main__":
    sys.exit(main())

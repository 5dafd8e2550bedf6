#!/usr/bin/env bash
# Everything issue 3 measures on a lent GPU (H100 / H200), in one script.
#
#   benchmarks/gpu_run.sh [PHASE...]      PHASE: tests compile bench bench_compiled summary all (default: all)
#
# Result files go to $OUT (the device tool's output folder), or to
# benchmarks/results/gpu_<UTC time>/ when OUT is unset:
#   versions.txt       GPU, driver, python, torch, triton, smplx, this command
#   tests.txt          the kernel tests on the GPU for real (not the interpreter)
#   compile_check.txt  registers / spills / shared memory of every kernel configuration (sm_90)
#   bench.txt, gpu_smpl.json                     every benchmark but smplx under torch.compile
#   bench_compiled.txt, gpu_smpl_compiled.json   smplx under torch.compile (slow to compile)
#   summary.md         the tables (speed-ups, fraction of the roofline at B = 4096)
# Each phase fits the device tool's 10-minute limit on its own: on a tight lease run
# "tests compile bench summary" in one call and "bench_compiled summary" in a second.
#
# The GPU machine has no network and no smplx (nor, maybe, scipy): carry wheels in .whl/
# (ignored by git), e.g. on the dev machine, for the device's Python version:
#   pip download --no-deps -d .whl smplx==0.1.28
#   pip download --no-deps -d .whl --only-binary=:all: --python-version 3.X scipy
# and pass carry=[".whl"] to the device tool. They are installed with
#   pip install --no-index --no-deps --target /tmp/hmr_site/wheels .whl/*.whl
# hmr_fast itself is put on PYTHONPATH from this tree (hmr_fast/kernels and hmr_fast/training
# are links to kernels/ and training/, setup.py's package_dir), nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(all)
OUT=${OUT:-$ROOT/benchmarks/results/gpu_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
FAILED=()

SITE=/tmp/hmr_site
rm -rf "$SITE"
mkdir -p "$SITE/wheels"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE/wheels" .whl/*.whl || FAILED+=("wheels")
fi
for pkg in kernels training; do  # a copy of the tree that lost the links: lay them again
  [ -d "hmr_fast/$pkg" ] || ln -sfn "../$pkg" "hmr_fast/$pkg"
done
export PYTHONPATH="$ROOT:$SITE/wheels${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

{
  echo "command: benchmarks/gpu_run.sh ${PHASES[*]}"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/nvidia-smi: /'
  "$PY" - <<'EOF'
import importlib, importlib.metadata, sys
print("python", sys.version.split()[0])
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("triton", triton.__version__)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE (no CUDA device)")
for name in ("smplx", "scipy", "pytest", "pytest_benchmark", "numpy"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", None) or importlib.metadata.version(name.replace("_", "-")))
    except Exception as exc:  # noqa: BLE001
        print(name, "MISSING:", exc, "-- carry its wheel in .whl/ (see benchmarks/gpu_run.sh)")
EOF
} >"$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

has() { for p in "${PHASES[@]}"; do [ "$p" = "$1" ] || [ "$p" = all ] && return 0; done; return 1; }

if has tests; then
  echo "== tests (GPU, compiled kernels)"
  "$PY" -m pytest -q -p no:cacheprovider -rs --durations=15 tests/test_kernels.py tests/test_smpl_reference.py \
    >"$OUT/tests.txt" 2>&1 || FAILED+=("tests")
  tail -n 25 "$OUT/tests.txt"
fi

if has compile; then
  echo "== compile_check --arch sm_90"
  "$PY" -m hmr_fast.kernels.compile_check --arch sm_90 >"$OUT/compile_check.txt" 2>&1 || FAILED+=("compile")
  tail -n 45 "$OUT/compile_check.txt"
fi

run_bench() {  # PHASE PYTEST_FILTER JSON_NAME: one benchmark phase, its log and JSON under $OUT
  "$PY" -m pytest --noconftest -q -p no:cacheprovider benchmarks/bench_smpl_gpu.py -k "$2" \
    --benchmark-json "$OUT/$3.json" --benchmark-columns=median,iqr,rounds --benchmark-sort=name \
    >"$OUT/$1.txt" 2>&1 || FAILED+=("$1")
  tail -n 15 "$OUT/$1.txt"
}

if has bench; then
  echo "== benchmarks (all but smplx under torch.compile)"
  run_bench bench "not smplx_compiled" gpu_smpl
fi

if has bench_compiled; then
  echo "== benchmarks: smplx under torch.compile"
  run_bench bench_compiled "smplx_compiled" gpu_smpl_compiled
fi

if has summary; then
  jsons=()
  for f in "$OUT/gpu_smpl.json" "$OUT/gpu_smpl_compiled.json"; do [ -f "$f" ] && jsons+=("$f"); done
  if [ ${#jsons[@]} -gt 0 ]; then
    "$PY" benchmarks/bench_smpl_gpu.py summarize "${jsons[@]}" >"$OUT/summary.md" 2>&1 || FAILED+=("summary")
    cat "$OUT/summary.md"
  fi
fi

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]} (see $OUT)"
  exit 1
fi
echo "done: $OUT"

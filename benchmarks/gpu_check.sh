#!/usr/bin/env bash
# The GPU half of scratchlm, checked on a CUDA GPU in one go (issue 27), in under 8 minutes:
#
#   1. install scratchlm into the Python that has CuPy (no network: --no-deps --no-build-isolation);
#   2. record the GPU, its driver and the CUDA, CuPy and PyTorch versions (versions.json);
#   3. compile every .cu file with NVRTC through CuPy and look up every kernel that scratchlm/kernels/cuda/ops.py launches;
#   4. pytest -m gpu: every CUDA kernel against the NumPy reference (tests/test_gpu.py, Hypothesis), the Keras
#      fixtures on the cupy reference and fused paths, checkpoints from the GPU loaded on the CPU and back, the
#      NCCL all-reduce (one rank, and two ranks on one GPU where NCCL allows it);
#   5. python benchmarks/bench.py --workloads gpu against PyTorch (cuDNN LSTM, its CUDA attention) on the GPU.
#
#     bash benchmarks/gpu_check.sh                 # logs and JSON under $OUT when set, else ./gpu_check_out
#
# Optional wheels for packages the machine lacks (e.g. mpich for mpiexec) are installed from .whl/ if present.
# Every step runs whatever the previous one said; the exit status is the number of steps that failed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
failed=0
step() {                                        # step NAME SECONDS COMMAND...: run it, log it, count a failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date +%T), at most ${limit}s)"
    timeout "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

{
if ls .whl/*.whl >/dev/null 2>&1; then
    step "install carried wheels" 120 $PY -m pip install -q --no-index --no-deps .whl/*.whl
fi
step "install scratchlm" 120 $PY -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

step "versions" 60 $PY - "$OUT/versions.json" <<'EOF'
import json, platform, sys
import cupy, numba, numpy
rt = cupy.cuda.runtime
found = {"python": platform.python_version(), "numpy": numpy.__version__, "numba": numba.__version__,
         "cupy": cupy.__version__, "gpu": rt.getDeviceProperties(0)["name"].decode(),
         "cuda_driver": rt.driverGetVersion(), "cuda_runtime": rt.runtimeGetVersion()}
try:
    from cupy.cuda import nccl
    found["nccl"] = nccl.get_version() if getattr(nccl, "available", False) else "not available"
except ImportError as exc:
    found["nccl"] = f"not importable: {exc}"
try:
    import torch
    found.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
except ImportError:
    pass
print(json.dumps(found, indent=1))
json.dump(found, open(sys.argv[1], "w"), indent=1)
EOF

step "compile every CUDA source" 180 $PY - <<'EOF'
import re, time, importlib.resources
import numpy
from scratchlm.kernels import gpu
source = importlib.resources.files("scratchlm.kernels").joinpath("gpu.py").read_text()
for module, name in sorted(set(re.findall(r'_kernel\("(\w+)", "(\w+)"', source))):
    start = time.perf_counter()
    for dtype in (numpy.float32, numpy.float64):
        gpu._kernel(module, name, dtype)
    print(f"{module}.cu {name}: f32 and f64 loaded in {time.perf_counter() - start:.2f} s")
EOF

which mpiexec || echo "no mpiexec here: the MPI/NCCL tests skip"
timeout_flag=""
$PY -c "import pytest_timeout" 2>/dev/null && timeout_flag="--timeout=150"
step "pytest -m gpu" 330 $PY -m pytest -m gpu tests -q -rfEs -p no:cacheprovider $timeout_flag \
    --junitxml="$OUT/pytest_gpu.xml" -W ignore::DeprecationWarning

step "bench --workloads gpu" 240 env SCRATCHLM_BENCH_LOG="$OUT/bench_workers.log" \
    $PY benchmarks/bench.py --workloads gpu --frameworks scratchlm,scratchlm-reference,torch \
    --repeat "${BENCH_REPEAT:-3}" --no-memory --json "$OUT/bench_gpu.json"
echo "=== done: $failed step(s) failed"
exit "$failed"
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"

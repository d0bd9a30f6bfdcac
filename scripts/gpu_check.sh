#!/usr/bin/env bash
# GPU check of the CUDA kernels (kernels/cuda/*.cu) on a machine with an NVIDIA GPU: configures and
# builds lathe with -DLATHE_CUDA=ON against the system python3's LibTorch (torch with CUDA), then
# runs the CUDA unit tests (lathe_tests --gtest_filter='*Cuda*'), the kernel harness' test mode
# (every backend, so cuda is checked against cpu-ref) and its perf mode. Logs go to $OUT when set
# (else build-gpu/logs); the exit status is the first failure's (build, tests, harness test), perf
# never fails the check.
#
#   scripts/gpu_check.sh                  # LATHE_GPU_BUILD_DIR=build-gpu, -j$(nproc)
#   OUT=/tmp/out scripts/gpu_check.sh
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LATHE_GPU_BUILD_DIR:-$root/build-gpu}
logs=${OUT:-$build/logs}
mkdir -p "$logs"
export CCACHE_DIR="${LATHE_CACHE:-$HOME/.cache/lathe}/ccache"
export PATH="$PATH:/usr/local/cuda/bin"

step() { echo "== $*" | tee -a "$logs/summary.log"; }
status=0
fail() {
  echo "FAILED: $*" | tee -a "$logs/summary.log"
  [ "$status" -ne 0 ] || status=1
}

: >"$logs/summary.log"
step "device"
{ nvidia-smi || true; nvcc --version || true; } >"$logs/device.log" 2>&1
head -20 "$logs/device.log" | tee -a "$logs/summary.log"

python=${LATHE_PYTHON:-python3}
torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>>"$logs/summary.log")
if [ -z "$torch_prefix" ]; then
  fail "no torch in $python (set LATHE_PYTHON)"
  exit "$status"
fi
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$logs/summary.log"

step "configure ($build)"
if ! cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLATHE_CUDA=ON \
    -DCMAKE_PREFIX_PATH="$torch_prefix" >"$logs/configure.log" 2>&1; then
  tail -40 "$logs/configure.log"
  fail "configure (see $logs/configure.log)"
  exit "$status"
fi

step "build"
if ! cmake --build "$build" -j "$(nproc)" --target lathe_tests lathe-kernels >"$logs/build.log" 2>&1; then
  grep -E "error|Error" "$logs/build.log" | head -40
  fail "build (see $logs/build.log)"
  exit "$status"
fi
grep -iE "warning" "$logs/build.log" | grep -v "CMake Warning" | head -20 | tee -a "$logs/summary.log"

step "lathe_tests --gtest_filter='*Cuda*'"
if ! "$build/tests/lathe_tests" --gtest_filter='*Cuda*' >"$logs/gtest_cuda.log" 2>&1; then fail "gtest *Cuda*"; fi
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]|nmse|Failure" "$logs/gtest_cuda.log" | head -60 | tee -a "$logs/summary.log"

step "lathe-kernels test"
if ! "$build/lathe-kernels" test >"$logs/kernels_test.log" 2>&1; then fail "lathe-kernels test"; fi
tail -30 "$logs/kernels_test.log" | tee -a "$logs/summary.log"

step "lathe-kernels perf"
if ! "$build/lathe-kernels" perf >"$logs/kernels_perf.log" 2>&1; then
  echo "(perf returned non-zero; not a check failure)" | tee -a "$logs/summary.log"
fi
tail -60 "$logs/kernels_perf.log" | tee -a "$logs/summary.log"

step "done: status $status (logs in $logs)"
exit "$status"

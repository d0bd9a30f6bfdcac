#!/usr/bin/env bash
# CPU kernel benchmark (issue 7): `lathe-kernels perf` on the cpu-fast backend for the large W4A16
# GEMV (GPTQ 4-bit g128, 8192x8192 and 16384x8192: 32 / 64 MiB of packed weights, beyond the 32 MiB
# L3) and the GEMM cases (m = 17), at 1 and 2 threads, each against the copy kernel measured in the
# same run with the same thread count. Writes bench/results/kernels_cpu.md.
#
#   bash bench/kernels_cpu.sh [build-dir]        (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bin=$build/lathe-kernels
[ -x "$bin" ] || { echo "no $bin: cmake --build $build --target lathe-kernels" >&2; exit 2; }
out=bench/results/kernels_cpu.md
mkdir -p bench/results
{
  echo "# CPU kernels: lathe-kernels perf (cpu-fast)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: figures move with it)"
  echo "- GB/s = (packed weight + scales + zeros + activations in and out) / time; \"of copy\" = that over"
  echo "  the copy kernel's (read + write) GB/s measured in the same run with the same threads."
  echo
  for t in 2 1; do
    cmd="OMP_WAIT_POLICY=passive $bin perf --backend cpu-fast --threads $t"
    echo "## $t thread(s)"
    echo
    echo '```'
    echo "\$ $cmd"
    OMP_WAIT_POLICY=passive "$bin" perf --backend cpu-fast --threads "$t"
    echo '```'
    echo
  done
} > "$out"
echo "wrote $out"

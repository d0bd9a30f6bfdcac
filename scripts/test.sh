#!/usr/bin/env bash
# Runs the whole test suite: brings the build up to date, then runs every C++ and Python test
# through ctest. Extra arguments go to ctest (e.g. -R safetensors).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LATHE_BUILD_DIR:-$root/build}
export CCACHE_DIR="${LATHE_CACHE:-$HOME/.cache/lathe}/ccache"
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"

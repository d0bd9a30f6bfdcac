#!/usr/bin/env bash
# Runs the whole test suite: brings the build up to date, then runs every C++ and Python test
# through ctest. Extra arguments go to ctest (e.g. -R safetensors). Each test's time goes to
# BUILD/test-results.xml (JUnit; scripts/slowest_tests.py lists the slowest). LATHE_THREADS (default 1)
# is the thread count of every test process; the suite must pass at any count.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LATHE_BUILD_DIR:-$root/build}
export CCACHE_DIR="${LATHE_CACHE:-$HOME/.cache/lathe}/ccache"
# The real models scripts/setup.sh installed (tests/python/test_gguf.py and the Gemma tests).
export LATHE_MODELS_DIR="${LATHE_CACHE:-$HOME/.cache/lathe}/models"
# llama.cpp's HF → GGUF converter that scripts/setup.sh unpacked (tests/python/test_gguf_archs.py).
export LATHE_LLAMA_CPP_DIR="${LATHE_CACHE:-$HOME/.cache/lathe}/llama.cpp-0.3.36"
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --output-junit "$build/test-results.xml" "$@"

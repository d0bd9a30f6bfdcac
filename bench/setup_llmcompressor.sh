#!/usr/bin/env bash
# Creates the virtualenv that bench/gptq_vs_llmcompressor.py runs llm-compressor in. It lives outside
# the repository and apart from the project's .venv: llm-compressor pins transformers to a range
# (0.14.0.1: >=5.15,<=5.17) that the project's transformers 5.23 is outside of.
#
#   bash bench/setup_llmcompressor.sh          # prints the venv's python path on the last line
#
# Environment: LATHE_CACHE (default ~/.cache/lathe); the venv is $LATHE_CACHE/bench-llmc-venv.
# Idempotent: a venv whose pins match is reused (marker file .bench-complete holds the pin line); an
# incomplete one is completed in place.
#
# Only PyPI is reachable from the project's machines, so torch is PyPI's default Linux wheel (the CUDA
# build with its nvidia-* wheels, about 2.5 GB installed); it runs on CPU without a GPU. torch 2.11.0
# is the same version as the project's requirements.txt (llm-compressor 0.14 accepts 2.10 … 2.14).
set -euo pipefail

cache=${LATHE_CACHE:-$HOME/.cache/lathe}
venv="$cache/bench-llmc-venv"
python_bin=${LATHE_PYTHON:-python3}
# Everything else (transformers 5.17.x, compressed-tensors 0.19.0, accelerate, datasets, auto-round)
# is resolved by pip from llmcompressor's own pins.
# torchvision: transformers 5.17's monkey patching (used by llm-compressor's load_quantizable_moe for
# Qwen2-MoE, OLMoE, Qwen3-MoE, DeepSeek-V3) imports every image processor, some of which need it.
pins=(llmcompressor==0.14.0.1 torch==2.11.0 torchvision==0.26.0)
marker="$venv/.bench-complete"

if [ -f "$marker" ] && [ "$(cat "$marker")" = "${pins[*]}" ]; then
  echo "[setup_llmcompressor] $venv: up to date" >&2
else
  echo "[setup_llmcompressor] creating $venv (${pins[*]})" >&2
  mkdir -p "$cache"
  # An existing venv is completed in place (pip installs only what is missing or differs), so an
  # interrupted install is resumed rather than downloaded again.
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q --no-cache-dir "${pins[@]}"
  "$venv/bin/python" -c 'import llmcompressor, compressed_tensors, transformers, torch'
  printf '%s' "${pins[*]}" > "$marker"
fi
"$venv/bin/python" - <<'EOF' >&2
import importlib.metadata as m
print("[setup_llmcompressor] " + ", ".join(f"{p} {m.version(p)}" for p in
      ("llmcompressor", "compressed-tensors", "transformers", "torch", "accelerate", "tokenizers")))
EOF
echo "$venv/bin/python"

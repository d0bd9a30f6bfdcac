#!/usr/bin/env bash
# clang-format over every tracked C++ and CUDA source (issue 26: the tree is formatted and CI keeps
# it so). Without arguments it only checks (clang-format --dry-run -Werror, exit 1 on any
# difference); with --fix it rewrites the files in place. Style: .clang-format at the root (Google,
# 100 columns). Generated files opt out with `// clang-format off`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mapfile -t files < <(git ls-files '*.h' '*.hpp' '*.cpp' '*.cc' '*.cu' '*.cuh')
if [[ "${1:-}" == "--fix" ]]; then
  clang-format -i "${files[@]}"
else
  clang-format --dry-run -Werror "${files[@]}"
  echo "clang-format: ${#files[@]} files formatted"
fi

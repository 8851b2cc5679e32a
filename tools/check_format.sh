#!/usr/bin/env bash
# Check (default) or apply (--fix) the clang-format style of .clang-format to the C++ / CUDA
# sources: csrc/ and the CPU emulator (tests/emulator/cuda_emulator/).  Needs the pinned
# clang-format (pip install clang-format==23.1.5): other versions format some constructs
# differently.  CLANG_FORMAT overrides the binary.  Exit status 0: every file is formatted.
set -euo pipefail
cd "$(dirname "$0")/.."
CF=${CLANG_FORMAT:-clang-format}
WANT=23.1.5
command -v "$CF" >/dev/null || { echo "check_format: $CF not found (pip install clang-format==$WANT)" >&2; exit 2; }
ver=$("$CF" --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)
[[ "$ver" == "$WANT" ]] || echo "check_format: warning: clang-format $ver, the style is pinned to $WANT" >&2
mapfile -t files < <(git ls-files -co --exclude-standard -- 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' \
  'tests/emulator/cuda_emulator/*.h' 'tests/emulator/cuda_emulator/*.cpp' | LC_ALL=C sort)
if [[ "${1:-}" == "--fix" ]]; then
  "$CF" -i "${files[@]}"
  echo "check_format: ${#files[@]} files formatted"
else
  "$CF" --dry-run --Werror "${files[@]}"
  echo "check_format: ${#files[@]} files clean"
fi

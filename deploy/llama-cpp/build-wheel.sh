#!/usr/bin/env bash
# Compiles the llama-cpp-python wheel for this host once and prints the wheel's path.
#
#   deploy/llama-cpp/build-wheel.sh        -> path of the cached wheel on stdout
#
# The wheel is cached under ~/.cache/llamaherd/wheels, keyed by version *and* CMake flags
# (deploy/llama-cpp/cmake-args.sh) and CPU architecture: pip's own cache keys on the sdist
# only, so it would silently reuse a CPU build after a CUDA toolkit appears. make setup and
# the Ansible wheelhouse both use it: compiled once, installed everywhere.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
cache=${LLAMAHERD_CACHE:-$HOME/.cache/llamaherd}
llama_version=$(sed -n 's/^ *"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$root/pyproject.toml")

if [[ -z "$llama_version" ]]; then
  echo "build-wheel: could not read the pinned llama-cpp-python version from pyproject.toml" >&2
  exit 1
fi

cmake_args=$("$here/cmake-args.sh")
key=$(printf '%s\n' "$llama_version" "$cmake_args" "$(uname -m)" | sha256sum | cut -c1-16)
wheel_dir="$cache/wheels/llama-cpp-python-$llama_version-$key"

if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "build-wheel: building llama-cpp-python $llama_version with: $cmake_args" >&2
  echo "build-wheel: this compiles llama.cpp, 5-10 minutes on 2 cores (log: $wheel_dir.log)" >&2
  mkdir -p "$wheel_dir"
  if ! CMAKE_ARGS="$cmake_args" "$python" -m pip wheel --no-deps --no-cache-dir \
      -w "$wheel_dir" "llama-cpp-python==$llama_version" >"$wheel_dir.log" 2>&1; then
    tail -n 40 "$wheel_dir.log" >&2
    rm -rf "$wheel_dir"
    echo "build-wheel: the llama-cpp-python build failed; the full log is $wheel_dir.log" >&2
    exit 1
  fi
fi
ls "$wheel_dir"/llama_cpp_python-*.whl | head -n 1

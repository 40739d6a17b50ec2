#!/usr/bin/env bash
# Compiles the llama-cpp-python wheel for this host once and prints the wheel's path.
#
#   deploy/llama-cpp/build-wheel.sh          -> path of the cached wheel on stdout
#   deploy/llama-cpp/build-wheel.sh --kind   -> what this host needs, builds nothing:
#       kind=<arch>-<cpu|cuda>-<key>   the wheelhouse folder for hosts like this one
#       cmake_args=<flags>             from cmake-args.sh (its reasoning goes to stderr)
#       cached=<path or empty>         the wheel, when this host has already built it
#
# The wheel is cached under $LLAMAHERD_CACHE/wheels (default ~/.cache/llamaherd), keyed by
# version *and* CMake flags (deploy/llama-cpp/cmake-args.sh) and CPU architecture: pip's own
# cache keys on the sdist only, so it would silently reuse a CPU build after a CUDA toolkit
# appears. Hosts with the same key are one "kind": make setup and the Ansible roles both use
# this script, so a kind is compiled once and its wheel installed everywhere.
#
# Environment: PYTHON (the interpreter whose pip builds), LLAMAHERD_LLAMA_CPP_VERSION (instead
# of reading the pin from pyproject.toml, for a copy of this script outside the repository),
# LLAMAHERD_CUDA and LLAMAHERD_CMAKE_ARGS (see cmake-args.sh). pip reads its own PIP_*
# variables, so PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR builds offline from a folder holding the
# sdist and its build requirements (what the Ansible roles stage on a build host).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
cache=${LLAMAHERD_CACHE:-$HOME/.cache/llamaherd}
llama_version=${LLAMAHERD_LLAMA_CPP_VERSION:-}
if [[ -z "$llama_version" && -f "$here/../../pyproject.toml" ]]; then
  llama_version=$(sed -n 's/^ *"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$here/../../pyproject.toml")
fi

if [[ -z "$llama_version" ]]; then
  echo "build-wheel: could not read the pinned llama-cpp-python version from pyproject.toml;" \
    "set LLAMAHERD_LLAMA_CPP_VERSION" >&2
  exit 1
fi

cmake_args=$("$here/cmake-args.sh")
key=$(printf '%s\n' "$llama_version" "$cmake_args" "$(uname -m)" | sha256sum | cut -c1-16)
wheel_dir="$cache/wheels/llama-cpp-python-$llama_version-$key"
cached=$(ls "$wheel_dir"/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)

if [[ "${1:-}" == --kind ]]; then
  accel=cpu
  [[ " $cmake_args " == *" -DGGML_CUDA=ON "* ]] && accel=cuda
  echo "kind=$(uname -m)-$accel-$key"
  echo "cmake_args=$cmake_args"
  echo "cached=$cached"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: build-wheel.sh [--kind]" >&2
  exit 2
fi

if [[ -z "$cached" ]]; then
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

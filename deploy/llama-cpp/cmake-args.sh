#!/usr/bin/env bash
# Prints the CMake flags that build llama.cpp (inside llama-cpp-python) safely on this host.
#
#   deploy/llama-cpp/cmake-args.sh            -> flags on stdout, the reasoning on stderr
#   LLAMAHERD_CMAKE_ARGS="..." overrides the detection entirely.
#
# Why not llama.cpp's defaults: GGML_NATIVE=ON compiles for whatever the build host
# advertises, and x86 VMs that advertise AMX crash in the AMX matmul kernels on the
# first decode. So x86 builds pin an explicit instruction set instead.
# GGML_RPC is always on: layer pipelining across nodes needs the RPC backend.
set -euo pipefail

say() { echo "cmake-args: $*" >&2; }

if [[ -n "${LLAMAHERD_CMAKE_ARGS:-}" ]]; then
  say "using LLAMAHERD_CMAKE_ARGS from the environment"
  echo "$LLAMAHERD_CMAKE_ARGS"
  exit 0
fi

args=(-DGGML_RPC=ON)
arch=$(uname -m)

is_jetson() { [[ "$arch" == "aarch64" && -f /etc/nv_tegra_release ]]; }

has_nvidia_gpu() {
  [[ -e /dev/nvidia0 ]] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
}

find_nvcc() {
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return 0; fi
  local candidate
  for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    [[ -x "$candidate" ]] && { echo "$candidate"; return 0; }
  done
  return 1
}

cuda_args() {
  local nvcc
  if ! nvcc=$(find_nvcc); then
    say "an NVIDIA GPU is present but nvcc was not found."
    say "install the CUDA toolkit (JetPack on Jetson) or set LLAMAHERD_CMAKE_ARGS to build for the CPU."
    exit 1
  fi
  args+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_COMPILER=$nvcc")
}

if is_jetson; then
  say "Jetson ($(head -c 60 /etc/nv_tegra_release | tr -d '#\n')): CUDA for Orin (sm_87)"
  cuda_args
  args+=(-DCMAKE_CUDA_ARCHITECTURES=87)
elif has_nvidia_gpu; then
  say "NVIDIA GPU found: CUDA for the installed GPU"
  cuda_args
  args+=(-DCMAKE_CUDA_ARCHITECTURES=native)
fi

case "$arch" in
  x86_64|amd64)
    flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
    has() { [[ " $flags " == *" $1 "* ]]; }
    if has avx2 && has fma && has f16c; then
      say "x86 CPU with AVX2: explicit AVX2/FMA/F16C, no native or AMX kernels"
      args+=(-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
    else
      say "x86 CPU without AVX2: AVX only"
      args+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF)
    fi
    ;;
  aarch64|arm64)
    say "ARM CPU: native CPU kernels"
    args+=(-DGGML_NATIVE=ON)
    ;;
  *)
    say "unrecognised CPU '$arch': llama.cpp defaults"
    ;;
esac

echo "${args[*]}"

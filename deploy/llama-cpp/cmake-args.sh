#!/usr/bin/env bash
# Prints the CMake flags that build llama.cpp (inside llama-cpp-python) safely on this host.
#
#   deploy/llama-cpp/cmake-args.sh            -> flags on stdout, the reasoning on stderr
#   LLAMAHERD_CMAKE_ARGS="..." overrides the detection entirely.
#   LLAMAHERD_CUDA=auto (default) builds for CUDA on a Jetson or a host with an NVIDIA GPU and
#     fails when nvcc is missing there; if-available builds for the CPU instead, saying so
#     (the Ansible roles use this: a board without its toolkit still gets a working worker);
#     off never builds for CUDA.
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

cuda_mode=${LLAMAHERD_CUDA:-auto}
case "$cuda_mode" in
  auto|if-available|off) ;;
  *) say "LLAMAHERD_CUDA must be auto, if-available or off, not '$cuda_mode'"; exit 2 ;;
esac

args=(-DGGML_RPC=ON)
arch=$(uname -m)

# L4T alone writes this file; the architecture is not checked so that a stand-in board (a
# test host carrying a copy) takes the Jetson branch as a real one would.
is_jetson() { [[ -f /etc/nv_tegra_release ]]; }

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

# Adds the CUDA flags for CUDA architecture $1, or returns 1 (CPU build) when nvcc is missing
# and LLAMAHERD_CUDA=if-available.
cuda_args() {
  local nvcc
  if ! nvcc=$(find_nvcc); then
    if [[ "$cuda_mode" == if-available ]]; then
      say "no CUDA toolkit here (nvcc not found on PATH, in /usr/local/cuda or /usr/local/cuda-*):"
      say "skipping the CUDA build, building for the CPU instead. Install the CUDA toolkit"
      say "(on a Jetson: sudo apt install nvidia-jetpack) and build again for GPU offload."
      return 1
    fi
    say "an NVIDIA GPU is present but nvcc was not found."
    say "install the CUDA toolkit (JetPack on Jetson), or set LLAMAHERD_CUDA=if-available or"
    say "LLAMAHERD_CMAKE_ARGS to build for the CPU."
    exit 1
  fi
  args+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_COMPILER=$nvcc" "-DCMAKE_CUDA_ARCHITECTURES=$1")
}

if [[ "$cuda_mode" == off ]]; then
  say "LLAMAHERD_CUDA=off: CPU build"
elif is_jetson; then
  release=$(sed -n '1s/^# *\(R[0-9]* ([a-z]*), REVISION: [0-9.]*\).*/\1/p' /etc/nv_tegra_release)
  say "Jetson (L4T ${release:-unknown release}): CUDA for Orin (sm_87)"
  cuda_args 87 || true
elif has_nvidia_gpu; then
  say "NVIDIA GPU found: CUDA for the installed GPU"
  cuda_args native || true
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

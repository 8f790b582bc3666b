#!/usr/bin/env bash
# Download what the GPU machine lacks to run dynamo-nixl's VRAM path from a source tree
# (tests/gpu/test_nixl_vram.py, benchmarks/transfer_bench_gpu.py), and pack it like
# fetch_wheels.sh does, into a folder of its own so that .whl/ stays as it is:
#
#   scripts/gpu/fetch_nixl_wheels.sh       # -> .whl-nixl/parts/01 .. NN, .whl-nixl/parts/SHA256SUMS
#
# The image has Python 3.12, torch, numpy and pluggy; it lacks NIXL (UCX included in the
# wheel) and msgspec (dynamo-core's RemoteRegion). nixl-cu13 declares torch but never imports
# it: install with --no-deps. The nixl wheel alone is ~59 MB, so with the default part size it
# travels whole in one part, next to a working tree of a few MB; set PART_BYTES lower (e.g.
# 30000000) to cut it into parts that scripts/gpu/stage_wheels.sh-style staging joins again.
# .whl-nixl/ is listed in .git/info/exclude, not in .gitignore.
set -euo pipefail

cd "$(git rev-parse --show-toplevel)"
WHL=.whl-nixl
PART_BYTES=${PART_BYTES:-$((60 * 1000 * 1000))}
WHEELS=(nixl-cu13==1.5.1 msgspec==0.22.0)

PLATFORMS=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
           manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

mkdir -p "$WHL/all"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$WHL/all" "${WHEELS[@]}"

(cd "$WHL/all" && sha256sum *.whl) > "$WHL/SHA256SUMS"
python3 scripts/gpu/pack_wheels.py "$WHL/all" "$WHL/parts" --part-bytes "$PART_BYTES"
cp "$WHL/SHA256SUMS" "$WHL/parts/SHA256SUMS"
du -sh "$WHL"/parts/* | sed 's/^/  /'

# Sourced by the fetch_*_wheels.sh scripts: download wheels for the GPU machine's image
# (CPython 3.12, x86_64 manylinux) and pack them into parts of one `run` call each.

# download_wheels DIR NAME==VERSION...: the wheels alone (--no-deps: each script names them all).
download_wheels() {
  local dir=$1 tag platforms=()
  shift
  for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
             manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform any -d "$dir" "$@"
}

# pack_wheels WHL PART_BYTES: WHL/all's wheels -> WHL/SHA256SUMS and WHL/parts/NN (+ SHA256SUMS).
pack_wheels() {
  local whl=$1 part_bytes=$2
  (cd "$whl/all" && sha256sum *.whl) > "$whl/SHA256SUMS"
  rm -rf "$whl/parts"
  python3 scripts/gpu/pack_wheels.py "$whl/all" "$whl/parts" --part-bytes "$part_bytes"
  cp "$whl/SHA256SUMS" "$whl/parts/SHA256SUMS"
  echo "$(ls "$whl/all" | wc -l) wheels, $(du -sh "$whl/all" | cut -f1) in all; parts:"
  du -sb "$whl"/parts/[0-9]* | sed 's/^/  /'
}

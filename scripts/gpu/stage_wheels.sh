#!/usr/bin/env bash
# On the GPU machine, from the repository root: gather the wheel part(s) this call carried
# (.whl/parts/NN, made by fetch_wheels.sh) under /root/whl. With --install, once every part has
# come (one call each, each within 30 s of the last, so the machine stays warm and keeps /root),
# join the cut wheels, check all against SHA256SUMS and install them into $SITE (/root/site).
# SGLang's set has its own target, since its pins clash with vLLM's:
#   WHL=.whl-sglang SITE=/root/site-sglang scripts/gpu/stage_wheels.sh [--install]
#
#   run(carry=[".whl/parts/01", ".whl/parts/SHA256SUMS"], command="scripts/gpu/stage_wheels.sh")
#   ...
#   run(carry=[".whl/parts/08", ".whl/parts/SHA256SUMS"], command="scripts/gpu/stage_wheels.sh --install")
set -euo pipefail
WHL=${WHL:-.whl}  # WHL=.whl-nixl for the set `fetch_wheels.sh nixl` makes, .whl-sglang for SGLang's
SITE=${SITE:-/root/site}
STORE=/root/whl-$(basename "$SITE")  # one store per target: two sets never mix
mkdir -p "$STORE"
for part in "$WHL"/parts/[0-9]*/; do
  [ -d "$part" ] && cp "$part"* "$STORE/" && echo "staged part $(basename "$part")"
done
cp "$WHL"/parts/SHA256SUMS "$STORE/"
echo "$(ls "$STORE" | grep -vc SHA256SUMS) files under $STORE ($(du -sh "$STORE" | cut -f1))"
[ "${1:-}" = "--install" ] || exit 0

cd "$STORE"
for first in *.piece-00; do
  [ -e "$first" ] || continue
  wheel=${first%.piece-00}
  cat "$wheel".piece-* > "$wheel" && rm "$wheel".piece-*
done
sha256sum --check --quiet SHA256SUMS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" ./*.whl
echo "installed $(ls ./*.whl | wc -l) wheels into $SITE"

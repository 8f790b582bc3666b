"""Pack a folder of wheels into parts of at most N bytes, one part per device call.

Whole wheels go first (first fit, largest first); wheels too big for any part are then cut
into byte ranges that fill the room left in each part, then new parts. A cut wheel's pieces
are named `WHEEL.piece-NN` in order; `stage_wheels.sh` joins them with `cat` and checks the
result against SHA256SUMS.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def pack(source: Path, dest: Path, part_bytes: int) -> list[list[str]]:
    wheels = sorted(source.glob("*.whl"), key=lambda p: p.stat().st_size, reverse=True)
    big = [w for w in wheels if w.stat().st_size > part_bytes // 2]
    small = [w for w in wheels if w not in big]
    parts: list[tuple[int, list[tuple[Path, int, int]]]] = []  # (used, [(wheel, start, end)])

    def new_part() -> int:
        parts.append((0, []))
        return len(parts) - 1

    for wheel in small:
        size = wheel.stat().st_size
        index = next((i for i, (used, _) in enumerate(parts) if used + size <= part_bytes), None)
        if index is None:
            index = new_part()
        used, files = parts[index]
        parts[index] = (used + size, files + [(wheel, 0, size)])
    for wheel in big:
        size, start = wheel.stat().st_size, 0
        index = 0
        while start < size:
            if index == len(parts):
                new_part()
            used, files = parts[index]
            room = part_bytes - used
            if room > 0:
                end = min(size, start + room)
                parts[index] = (used + end - start, files + [(wheel, start, end)])
                start = end
            index += 1

    if dest.exists():
        shutil.rmtree(dest)
    listing: list[list[str]] = []
    piece_no: dict[Path, int] = {}
    for number, (_, files) in enumerate(parts, start=1):
        folder = dest / f"{number:02d}"
        folder.mkdir(parents=True)
        names = []
        for wheel, start, end in files:
            if start == 0 and end == wheel.stat().st_size:
                shutil.copy(wheel, folder / wheel.name)
                names.append(wheel.name)
                continue
            n = piece_no.get(wheel, 0)
            piece_no[wheel] = n + 1
            name = f"{wheel.name}.piece-{n:02d}"
            with wheel.open("rb") as src, (folder / name).open("wb") as out:
                src.seek(start)
                out.write(src.read(end - start))
            names.append(name)
        listing.append(names)
    return listing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--part-bytes", type=int, default=55_000_000)
    args = parser.parse_args()
    for number, names in enumerate(pack(args.source, args.dest, args.part_bytes), start=1):
        print(f"part {number:02d}: {len(names)} files")


if __name__ == "__main__":
    main()

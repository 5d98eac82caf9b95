"""Write ``src/edsr/datasets/images.tsv``, the pixel hashes ``edsr data download`` checks the
sets published image by image (T91, BSD200) against.

    python scripts/pixel_hashes.py /path/to/shared/datasets

reads ``MANIFEST.tsv`` there (set, file, width, height, mode, sha256, source repository, path,
commit) and decodes each listed PNG, a lossless copy of its source, so the hash of its pixels
is the hash of the source's. A row whose PNG does not have the SHA-256 the manifest records,
or whose size differs from it, stops the script: no hash is written of a file not read.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path, PurePosixPath

from edsr.datasets.catalogue import DATASETS, IMAGE_TABLE
from edsr.datasets.images import pixel_digest
from edsr.io.download import file_digest
from edsr.io.image import read_image

_HEADER = """\
# Pixel hashes of the data sets published image by image, one line per image: set, name (the
# image is stored as FOLDER/HR/NAME.png), path in the source repository (the set's address in
# catalogue.py is its base), width, height, SHA-256 of the decoded pixels (pixel_digest in
# images.py). Written by scripts/pixel_hashes.py from lossless PNG copies of the sources.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shared", type=Path, help="folder holding MANIFEST.tsv")
    args = ap.parse_args()
    sets = [e.name for e in DATASETS.values() if e.images is not None]
    lines = [_HEADER.rstrip("\n")]
    with open(args.shared / "MANIFEST.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["set"] in sets]
    for r in sorted(rows, key=lambda r: (sets.index(r["set"]), r["file"])):
        png = args.shared / r["file"]
        if file_digest(png) != r["sha256"]:
            sys.exit(f"{png}: SHA-256 differs from MANIFEST.tsv; not hashing it")
        image = read_image(png)
        h, w = image.pixels.shape[:2]
        if (w, h) != (int(r["width"]), int(r["height"])):
            sys.exit(f"{png}: {w}x{h}, MANIFEST.tsv says {r['width']}x{r['height']}")
        name = PurePosixPath(r["file"]).stem
        lines.append(
            "\t".join([r["set"], name, r["source_path"], str(w), str(h), pixel_digest(image)])
        )
    IMAGE_TABLE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{IMAGE_TABLE}: {len(rows)} images of {', '.join(sets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Store a trained model as the package's bundled fp16 safetensors file.

    python scripts/bundle_model.py RUN_DIR/model.safetensors

Writes ``src/edsr/assets/<stem>-<sha8>.safetensors`` (fp16 weights, config in the header) and
prints the SHA-256 and size for the registry entry. The eval reports that fill the entry's
metrics are then made from the bundled file itself, so they measure what users get:

    edsr eval --model mdsr-baseline-291 --data SET ... --scale 2 3 4 \
        --json src/edsr/assets/<name>.eval.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from edsr.io.cache import sha256_file
from edsr.weights import load_model, save_model

ASSETS = Path(__file__).resolve().parents[1] / "src" / "edsr" / "assets"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="trained model file (a run's model.safetensors)")
    p.add_argument("--stem", default="mdsr_baseline_291", help="file name before the hash")
    args = p.parse_args(argv)
    model = load_model(args.model, device="cpu")
    tmp = ASSETS / f".{args.stem}.tmp.safetensors"
    save_model(model, tmp, dtype=torch.float16, overwrite=True, metadata={"source": "trained here"})
    digest = sha256_file(tmp)
    dest = ASSETS / f"{args.stem}-{digest[:8]}.safetensors"
    os.replace(tmp, dest)
    print(f"file:   {dest.name}\nsha256: {digest}\nsize:   {dest.stat().st_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

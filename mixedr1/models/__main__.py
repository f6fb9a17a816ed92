"""python -m mixedr1.models tiny --out DIR [--seed 0] [--family NAME]: write a random tiny model."""

from __future__ import annotations

import argparse
from typing import Optional

from mixedr1.families import FAMILIES
from mixedr1.models.tiny import TINY_BUILDERS, build_tiny_model


def _main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mixedr1.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write a random tiny model of --family to --out")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--family", choices=tuple(TINY_BUILDERS), default="qwen2_5_vl")
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out, seed=args.seed, family=args.family)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"wrote a tiny {FAMILIES[args.family].description} to {path} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    _main()

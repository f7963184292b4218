"""`refinenet-data`: synthetic dataset, VOC/SBD lists, MindRecord conversion. Exit 0 ok, 2 bad input."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from refinenet.data.errors import DataError
from refinenet.data.progress import Progress


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refinenet-data", description=__doc__.split(":")[1].strip())
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a small synthetic dataset in the VOC 2012 and SBD layouts")
    synth.add_argument("--out", required=True, help="data root for VOCdevkit/ and benchmark_RELEASE/")
    synth.add_argument("--images", type=_positive, default=40, help="distinct images (default 40)")
    synth.add_argument("--seed", type=_non_negative, default=0, help="random seed (default 0)")
    synth.add_argument("--min-size", type=_positive, default=48, help="smallest image side (default 48)")
    synth.add_argument("--max-size", type=_positive, default=96, help="largest image side (default 96)")

    lists = sub.add_parser("lists", help="convert VOC/SBD labels to gray PNGs and write the three list files")
    lists.add_argument("--data-root", required=True, help="folder holding VOCdevkit/ and benchmark_RELEASE/")

    mr = sub.add_parser("mindrecord", help="convert a list file into a MindRecord dataset (ModelZoo schema)")
    mr.add_argument("--data-root", default=None, help="folder that relative list paths are joined to")
    mr.add_argument("--list", required=True, help="list file: '<image> <label>' per line")
    mr.add_argument("--out", required=True, help="output prefix, e.g. DIR/sbdonly -> sbdonly0..sbdonly7")
    mr.add_argument("--shards", type=_positive, default=8, help="number of shard files (default 8)")
    mr.add_argument("--overwrite", action="store_true", help="replace an existing MindRecord of that prefix")
    return parser


def _run(args) -> None:
    if args.command == "synth":
        from refinenet.data import synth

        splits = synth.generate(args.out, num_images=args.images, seed=args.seed, min_size=args.min_size,
                                max_size=args.max_size, progress=Progress("synth"))
        print(f"wrote {len(set(splits.voc_ids) | set(splits.sbd_ids))} images under {args.out}: "
              f"VOC train {len(splits.voc_train)}, val {len(splits.voc_val)}; "
              f"SBD train {len(splits.sbd_train)}, val {len(splits.sbd_val)}")
    elif args.command == "lists":
        from refinenet.data.lists import build_lists

        result = build_lists(args.data_root, progress=Progress)
        for name, count in result.counts.items():
            print(f"{name}: {count} lines")
    else:
        from refinenet.data.mindrecord import write_mindrecord

        result = write_mindrecord(args.data_root, args.list, args.out, shards=args.shards,
                                  overwrite=args.overwrite, progress=Progress)
        print(f"wrote {result.rows} rows to {len(result.files)} file(s): {result.files[0]}"
              + (f" .. {result.files[-1]}" if len(result.files) > 1 else ""))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _run(args)
    except (DataError, FileExistsError, ValueError) as exc:
        print(f"refinenet-data {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0

"""Checkpoint manifests: the small JSON file that tells a complete checkpoint from a partial one.

No MindSpore import: the launcher runs `python -m refinenet.manifest scan DIR` on each host to learn
which checkpoints are complete there (sizes; `--verify` hashes every file too), and
`python -m refinenet.manifest verify CKPT` hashes just the one it chose (docs/workload-contract.md).
A checkpoint `refinenet-<epoch>_<step>.ckpt` is complete when `refinenet-<epoch>_<step>.json`
exists, parses, names it, and the `.ckpt` has the recorded size (and, when verifying, sha256).
Every manifest names the job that wrote it (`job_id`, from REFINENET_JOB_ID); manifests written
before that field existed read as `job_id` "".
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

FORMAT = "refinenet-ckpt/1"
PREFIX = "refinenet"
CKPT_DIRNAME = "ckpt"
JOB_ID_ENV = "REFINENET_JOB_ID"
_NAME = re.compile(rf"{PREFIX}-(\d+)_(\d+)\.ckpt")
_HASH_CHUNK = 1 << 22

PathLike = Union[str, "os.PathLike[str]"]


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or does not match its checkpoint."""

    def __init__(self, path: PathLike, problem: str):
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path = os.fspath(path)
        self.problem = problem


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint holds and how to check that it was written completely."""

    checkpoint: str
    stage: str
    epoch: int
    step: int
    steps_per_epoch: int
    global_step: int
    size: int
    sha256: str
    created: float
    rank: int
    job_id: str = ""
    format: str = FORMAT

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object, source: PathLike) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(source, "manifest is not a JSON object")
        if data.get("format") != FORMAT:
            raise ManifestError(source, f"format is {data.get('format')!r}, expected {FORMAT!r}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is not dataclasses.MISSING:
                    continue
                raise ManifestError(source, f"field {f.name!r} is missing")
            value = data[f.name]
            want = {"int": int, "float": (int, float), "str": str}[str(f.type)]
            if isinstance(value, bool) or not isinstance(value, want):
                raise ManifestError(source, f"field {f.name!r} has the wrong type: {value!r}")
            values[f.name] = float(value) if f.type == "float" else value
        return cls(**values)


@dataclass(frozen=True)
class ScanEntry:
    """A complete checkpoint found by `scan`: its absolute path and manifest."""

    path: str
    manifest: Manifest

    def to_json(self) -> dict:
        m = self.manifest
        return {"checkpoint": self.path, "epoch": m.epoch, "step": m.step, "global_step": m.global_step,
                "steps_per_epoch": m.steps_per_epoch, "stage": m.stage, "size": m.size, "sha256": m.sha256,
                "created": m.created, "rank": m.rank, "job_id": m.job_id}


def ckpt_name(epoch: int, step: int) -> str:
    """`refinenet-<epoch>_<step>.ckpt` (the ModelZoo naming)."""
    return f"{PREFIX}-{epoch}_{step}.ckpt"


def parse_ckpt_name(name: str) -> Optional[Tuple[int, int]]:
    """(epoch, step) from a checkpoint file name, or None for any other name."""
    m = _NAME.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def manifest_path(ckpt_path: PathLike) -> Path:
    return Path(ckpt_path).with_suffix(".json")


def file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: PathLike) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: PathLike, data: object) -> None:
    """Write `data` as JSON to a temporary file, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def current_job_id() -> str:
    """The job this process belongs to, as the launcher says (REFINENET_JOB_ID); "" when unset."""
    return os.environ.get(JOB_ID_ENV, "")


def make_manifest(ckpt_path: PathLike, *, stage: str, epoch: int, step: int, steps_per_epoch: int,
                  global_step: int, rank: int, created: Optional[float] = None,
                  job_id: Optional[str] = None) -> Manifest:
    """Describe a checkpoint file that has been written completely: its size and sha256 are taken now,
    from the file as written. `job_id` defaults to `current_job_id()`."""
    ckpt_path = Path(ckpt_path)
    return Manifest(checkpoint=ckpt_path.name, stage=stage, epoch=epoch, step=step,
                    steps_per_epoch=steps_per_epoch, global_step=global_step,
                    size=ckpt_path.stat().st_size, sha256=file_sha256(ckpt_path),
                    created=time.time() if created is None else created, rank=rank,
                    job_id=current_job_id() if job_id is None else job_id)


def write_manifest(ckpt_path: PathLike, manifest: Manifest) -> Path:
    """Write the manifest next to its checkpoint, atomically; returns its path."""
    path = manifest_path(ckpt_path)
    write_json_atomic(path, manifest.to_json())
    return path


def mark_complete(ckpt_path: PathLike, *, epoch: int, step: int, steps_per_epoch: int, stage: str = "command",
                  rank: int = 0, job_id: Optional[str] = None) -> Path:
    """For any program launched by refinenet-launch: declare a checkpoint written completely (call it
    after the file is closed). `epoch` counts from 1, `step` is the step within the epoch. Name the
    file `ckpt_name(epoch, step)` in `$REFINENET_CKPT_DIR` so a restart finds it."""
    global_step = (epoch - 1) * steps_per_epoch + step
    manifest = make_manifest(ckpt_path, stage=stage, epoch=epoch, step=step, steps_per_epoch=steps_per_epoch,
                             global_step=global_step, rank=rank, job_id=job_id)
    return write_manifest(ckpt_path, manifest)


def read_manifest(path: PathLike) -> Manifest:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ManifestError(path, "manifest is missing") from None
    except OSError as exc:
        raise ManifestError(path, f"manifest is unreadable: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(path, f"manifest is not valid JSON: {exc}") from None
    return Manifest.from_json(data, path)


def verify(ckpt_path: PathLike, *, check_hash: bool = True) -> Manifest:
    """The manifest of a complete checkpoint; `ManifestError` saying why it is not complete."""
    ckpt_path = Path(ckpt_path)
    manifest = read_manifest(manifest_path(ckpt_path))
    if manifest.checkpoint != ckpt_path.name:
        raise ManifestError(ckpt_path, f"manifest names {manifest.checkpoint!r}")
    try:
        size = ckpt_path.stat().st_size
    except FileNotFoundError:
        raise ManifestError(ckpt_path, "checkpoint file is missing") from None
    if size != manifest.size:
        raise ManifestError(ckpt_path, f"size is {size} bytes, the manifest says {manifest.size} (partial?)")
    if check_hash and file_sha256(ckpt_path) != manifest.sha256:
        raise ManifestError(ckpt_path, "sha256 differs from the manifest (corrupt or overwritten)")
    return manifest


def checkpoint_dir(path: PathLike) -> Path:
    """The folder holding checkpoints: `path` itself, or `path/ckpt` for a training output dir."""
    path = Path(path)
    sub = path / CKPT_DIRNAME
    if sub.is_dir() and not any(parse_ckpt_name(p.name) for p in path.glob(f"{PREFIX}-*.ckpt")):
        return sub
    return path


def scan(directory: PathLike, *, check_hash: bool = True) -> Tuple[List[ScanEntry], List[Tuple[str, str]]]:
    """(complete checkpoints newest first, [(path, why skipped)]) of a checkpoint folder.

    Newest means highest global step; a checkpoint file whose name is not in the ModelZoo
    pattern is ignored, a manifest without its checkpoint is reported as skipped.
    """
    folder = checkpoint_dir(directory).resolve()
    if not folder.is_dir():
        return [], []
    complete: List[ScanEntry] = []
    skipped: List[Tuple[str, str]] = []
    names = {p.name for p in folder.iterdir()}
    candidates = sorted(n for n in names if parse_ckpt_name(n))
    orphans = sorted(n for n in names if n.endswith(".json") and parse_ckpt_name(n[:-5] + ".ckpt")
                     and n[:-5] + ".ckpt" not in names)
    for name in candidates:
        path = folder / name
        try:
            complete.append(ScanEntry(str(path), verify(path, check_hash=check_hash)))
        except ManifestError as exc:
            skipped.append((str(path), exc.problem))
    for name in orphans:
        skipped.append((str(folder / name[:-5]) + ".ckpt", "checkpoint file is missing"))
    complete.sort(key=lambda e: (e.manifest.global_step, e.manifest.epoch, e.manifest.created), reverse=True)
    return complete, skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refinenet.manifest",
                                     description="Read and write checkpoint manifests.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_scan = sub.add_parser("scan", help="print the complete checkpoints of DIR as JSON, newest first "
                                         "(sizes checked; sha256 too with --verify)")
    p_scan.add_argument("dir", help="checkpoint folder (or a training --output-dir holding ckpt/)")
    p_scan.add_argument("--verify", action="store_true", help="also check each file's sha256")
    p_verify = sub.add_parser("verify", help="check one checkpoint's size and sha256 against its manifest: "
                                             "exit 0 when complete, 1 when not")
    p_verify.add_argument("ckpt", help="the checkpoint file (its manifest is next to it)")
    p_mark = sub.add_parser("mark", help="write the manifest of a checkpoint that is completely written")
    p_mark.add_argument("ckpt", help="the checkpoint file, named refinenet-<epoch>_<step>.ckpt")
    p_mark.add_argument("--steps-per-epoch", type=int, required=True)
    p_mark.add_argument("--stage", default="command")
    p_mark.add_argument("--rank", type=int, default=0)
    p_mark.add_argument("--job-id", help=f"the job that wrote it (default: ${JOB_ID_ENV}, or empty)")
    args = parser.parse_args(argv)
    if args.command == "mark":
        return _mark(args)
    if args.command == "verify":
        return _verify(args.ckpt)
    target = Path(args.dir)
    if target.exists() and not target.is_dir():
        print(f"error: {target}: not a directory", file=sys.stderr)
        return 2
    if not target.exists():
        print(f"{target}: no such directory (no checkpoints)", file=sys.stderr)
    complete, skipped = scan(target, check_hash=args.verify)
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(json.dumps([e.to_json() for e in complete]))
    return 0


def _mark(args: argparse.Namespace) -> int:
    parsed = parse_ckpt_name(Path(args.ckpt).name)
    if parsed is None:
        print(f"error: {args.ckpt}: not named {PREFIX}-<epoch>_<step>.ckpt", file=sys.stderr)
        return 2
    if not Path(args.ckpt).is_file():
        print(f"error: {args.ckpt}: no such file", file=sys.stderr)
        return 2
    epoch, step = parsed
    print(mark_complete(args.ckpt, epoch=epoch, step=step, steps_per_epoch=args.steps_per_epoch,
                        stage=args.stage, rank=args.rank, job_id=args.job_id))
    return 0


def _verify(ckpt: str) -> int:
    path = Path(ckpt).absolute()
    try:
        m = verify(path, check_hash=True)
    except ManifestError as exc:
        where = f" ({exc.path})" if exc.path != str(path) else ""
        print(f"not complete: {path}: {exc.problem}{where}", file=sys.stderr)
        return 1
    print(f"complete: {path}: size and sha256 match the manifest (epoch {m.epoch} step {m.step}, "
          f"global step {m.global_step}, job {m.job_id!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

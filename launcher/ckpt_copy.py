"""Carry a checkpoint from one host to another through their transports, and prove it arrived whole.

Hosts share no filesystem: the checkpoint streams from the source host through the launcher to the
target host in pieces (never held whole in memory), the manifest follows it, and the target host's
own scan (`refinenet.manifest scan --verify`: size and sha256 against the manifest) must list it
before it is used. A copy cut short leaves no manifest, so it is never taken for complete.
"""
from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass
from typing import Callable, List

from launcher.errors import HostError
from launcher.resume import ScanError, parse_scan

CHUNK = 1 << 22


@dataclass(frozen=True)
class CopyResult:
    """A verified copy: where it is on the target host, how many bytes, how long it took."""

    source_host: str
    host: str
    path: str
    size: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.size / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        return (f"{posixpath.basename(self.path)} copied from {self.source_host} to {self.host} "
                f"({self.size / 1e6:.1f} MB, {self.mb_per_s:.0f} MB/s) and verified there")


def manifest_of(ckpt_path: str) -> str:
    return ckpt_path[:-len(".ckpt")] + ".json" if ckpt_path.endswith(".ckpt") else ckpt_path + ".json"


def copy_checkpoint(source, source_path: str, target, target_dir: str,
                    scan_argv: Callable[[str], List[str]],
                    cwd: str = "/") -> CopyResult:
    """Copy `source_path` (and its manifest) from `source` into `target_dir` on `target`; verify it there.

    `scan_argv(directory)` is the target host's scan command. `HostError` (naming the host) when the
    copy fails or the copied checkpoint does not verify."""
    target_path = posixpath.join(target_dir, posixpath.basename(source_path))
    started = time.monotonic()
    size = target.write_chunks(target_path, source.read_chunks(source_path, CHUNK))
    target.write_chunks(manifest_of(target_path), source.read_chunks(manifest_of(source_path), CHUNK))
    seconds = time.monotonic() - started
    result = target.exec(scan_argv(target_dir), cwd=cwd, timeout=600)
    if not result.ok:
        detail = result.stderr.strip()[-300:]
        raise HostError(target.host, f"verifying the copied checkpoint failed: {detail}")
    try:
        complete = {posixpath.normpath(c.path) for c in parse_scan(result.stdout)}
    except ScanError as exc:
        raise HostError(target.host, f"verifying the copied checkpoint failed: {exc}") from None
    if posixpath.normpath(target_path) not in complete:
        why = result.stderr.strip().splitlines()
        raise HostError(target.host, f"the copied checkpoint {target_path} does not match its manifest"
                                     + (f": {why[-1]}" if why else ""))
    return CopyResult(source.host, target.host, target_path, size, seconds)

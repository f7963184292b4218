"""Carry a checkpoint from one host to another through their transports, and prove it arrived whole.

Hosts share no filesystem. The source's manifest is read first: it records the checkpoint's size and
sha256. The checkpoint then streams from the source host's `read` mode into the target host's `write`
mode, which hashes the bytes while writing them and gives the file its name only when size and sha256
match the manifest: verified at the target with no second read of the copy. The manifest follows,
checked the same way against its own bytes. A copy cut short leaves nothing under either name.

Route: where both transports offer a `program_command` (the OpenSSH client for SSH hosts, srun for a
Slurm node, this python locally), the two commands are joined by one OS pipe and the bytes never pass
through the launcher's Python (`pipe`); otherwise, or when such a command cannot connect (exit 255),
they pass through the launcher in pieces, `read_chunks` into `write_chunks` (`launcher`). Rates of
both against `scp -3`: docs/performance.md.
"""
from __future__ import annotations

import json
import os
import posixpath
import subprocess
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from launcher.errors import HostError
from launcher.hostside import files
from launcher.hostside.procs import write_all
from launcher.transport.hostprog import host_stdin
from launcher.transport.modes import read_failure, write_args, write_outcome

CHUNK = 1 << 22
PIPE = "pipe"
LAUNCHER = "launcher"
#: An OpenSSH client's exit code when it could not connect or authenticate.
SSH_FAILED = 255


@dataclass(frozen=True)
class CopyResult:
    """A verified copy: where it is on the target host, how many bytes, how long it took, which route."""

    source_host: str
    host: str
    path: str
    size: int
    seconds: float
    route: str = LAUNCHER

    @property
    def mb_per_s(self) -> float:
        return self.size / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        return (f"{posixpath.basename(self.path)} copied from {self.source_host} to {self.host} "
                f"({self.size / 1e6:.1f} MB, {self.mb_per_s:.0f} MB/s) and verified there")


def manifest_of(ckpt_path: str) -> str:
    return ckpt_path[:-len(".ckpt")] + ".json" if ckpt_path.endswith(".ckpt") else ckpt_path + ".json"


def recorded(host: str, manifest_path: str, data: bytes) -> Tuple[int, str]:
    """(size, sha256) a checkpoint manifest records; `HostError` naming `host` when it records none."""
    try:
        manifest = json.loads(data.decode("utf-8"))
        size, digest = manifest["size"], manifest["sha256"]
    except (ValueError, KeyError, TypeError):
        raise HostError(host, f"{manifest_path} is not a checkpoint manifest with size and sha256") from None
    if type(size) is not int or not isinstance(digest, str) or len(digest) != 64:
        raise HostError(host, f"{manifest_path} records no usable size and sha256")
    return size, digest.lower()


def copy_checkpoint(source, source_path: str, target, target_dir: str, *,
                    route: Optional[str] = None) -> CopyResult:
    """Copy `source_path` (and its manifest) from `source` into `target_dir` on `target`, verified there
    against the manifest while it is written. `route` forces `pipe` or `launcher` (default: `pipe` where
    both transports have one). `HostError` (naming the host) when the copy fails or does not verify."""
    manifest_path = manifest_of(source_path)
    try:
        manifest = source.read_file(manifest_path)
    except FileNotFoundError:
        raise HostError(source.host, f"{manifest_path} does not exist: nothing to verify a copy against"
                        ) from None
    size, digest = recorded(source.host, manifest_path, manifest)
    target_path = posixpath.join(target_dir, posixpath.basename(source_path))
    started = time.monotonic()
    used = None
    if route in (None, PIPE):
        used = copy_file_piped(source, source_path, target, target_path, size, digest, fallback=route is None)
    if used is None:
        if route not in (None, LAUNCHER):
            raise ValueError(f"route must be {PIPE!r} or {LAUNCHER!r}, got {route!r}")
        try:
            target.write_chunks(target_path, source.read_chunks(source_path, CHUNK), size=size, sha256=digest)
        except FileNotFoundError:
            raise HostError(source.host, f"cannot read {source_path}: it does not exist") from None
        used = LAUNCHER
    target.write_file(manifest_of(target_path), manifest)
    return CopyResult(source.host, target.host, target_path, size, time.monotonic() - started, used)


def copy_file_piped(source, source_path: str, target, target_path: str, size: int, digest: str,
                    fallback: bool = True) -> Optional[str]:
    """Copy through one OS pipe between the two hosts' program commands; `PIPE` when done, None when a
    transport has no such command (or, with `fallback`, when one could not connect). `HostError` when
    the copy failed or the bytes the target got do not match."""
    reader = source.program_command("read", source_path)
    writer = target.program_command("write", *write_args(target_path, 0o644, size, digest))
    if reader is None or writer is None:
        if not fallback:
            raise HostError(target.host if reader else source.host, "no command to copy through a pipe")
        return None
    program = host_stdin()
    r, w = os.pipe()
    try:
        write_proc = subprocess.Popen(writer, stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        os.close(w)
        raise HostError(target.host, f"cannot start {writer[0]}: {exc}") from None
    finally:
        os.close(r)
    try:
        try:
            write_all(w, program)
            read_proc = subprocess.Popen(reader, stdin=subprocess.PIPE, stdout=w, stderr=subprocess.PIPE)
        except BrokenPipeError:
            read_proc = None
        except OSError as exc:
            write_proc.kill()
            write_proc.communicate()
            raise HostError(source.host, f"cannot start {reader[0]}: {exc}") from None
    finally:
        os.close(w)
    read_code, read_err = 0, ""
    if read_proc is not None:
        read_err = read_proc.communicate(program)[1].decode("utf-8", "replace")
        read_code = read_proc.returncode
    out, write_err = (b.decode("utf-8", "replace") for b in write_proc.communicate())
    if fallback and SSH_FAILED in (read_code, write_proc.returncode):
        return None
    # Blame the reader only for a failure of its own: one that follows the writer's exit is the writer's.
    failure = read_failure(source.host, source_path, read_code, read_err)
    if failure is not None and (read_code in (files.NOT_FOUND, files.FAILED) or write_proc.returncode == 0):
        if isinstance(failure, FileNotFoundError):
            raise HostError(source.host, f"cannot read {source_path}: it does not exist")
        raise failure
    write_outcome(target.host, target_path, write_proc.returncode, out, write_err, size)
    return PIPE

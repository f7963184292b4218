"""The launcher's side of each host program mode (`launcher.hostside`), shared by all transports: the
arguments a mode takes and the meaning of what it answers.
"""
from __future__ import annotations

import json
import secrets
from typing import List, Mapping, Optional, Sequence, Tuple

from launcher.errors import HostError
from launcher.hostside import files, guard
from launcher.transport.base import SweepResult, WriteResult

CHUNK = 1 << 16

# -- exec


def exec_header(argv: Sequence[str], env: Optional[Mapping[str, str]], cwd: Optional[str],
                grace: float, nonce: str = "") -> bytes:
    """The JSON line that tells the exec guard what to run."""
    if not argv:
        raise ValueError("empty command")
    header = {"argv": [str(a) for a in argv], "env": {str(k): str(v) for k, v in (env or {}).items()},
              "cwd": None if cwd is None else str(cwd), "grace": float(grace), "nonce": nonce}
    return (json.dumps(header) + "\n").encode("utf-8")


def new_nonce() -> str:
    return "refinenet-guard-" + secrets.token_hex(8)


def split_exec_trailer(stderr: bytes, nonce: str) -> Tuple[bytes, Optional[int]]:
    """Separate the guard's status trailer (exec mode) from the command's own stderr."""
    marker = ("\n" + nonce + " ").encode("ascii")
    at = stderr.rfind(marker)
    if at < 0 or not stderr.endswith(b"\n"):
        return stderr, None
    try:
        status = int(stderr[at + len(marker):-1])
    except ValueError:
        return stderr, None
    return stderr[:at], status


def status_from_exit_code(code: Optional[int]) -> Optional[int]:
    """A guard's exit code back to a status: 128 + n means killed by signal n."""
    if code is None or code < 0:
        return code
    return -(code - 128) if 128 < code < 128 + 65 else code


# -- kill


def kill_args(pgid: int, sig: int, verify_env: Optional[Tuple[str, str]] = None) -> List[str]:
    """Arguments of the `kill` mode (see `Transport.kill_group`)."""
    args = [str(int(pgid)), str(int(sig))]
    if verify_env is not None:
        args.append(f"{verify_env[0]}={verify_env[1]}")
    return args


def kill_outcome(host: str, pgid: int, code: int, err: str = "") -> bool:
    """`Transport.kill_group`'s answer from the kill mode's exit code: True if signalled, False if no
    such (tagged) group; `HostError` when not permitted or the program failed."""
    if code == guard.NOT_PERMITTED:
        raise HostError(host, f"not permitted to signal process group {pgid}")
    if code not in (0, guard.NOT_FOUND):
        raise HostError(host, f"signalling process group {pgid} failed (exit {code}): {err.strip()}")
    return code == 0


# -- read and write


def read_failure(host: str, path: str, code: int, err: str) -> Optional[Exception]:
    """What a `read` that exited `code` means: None (read whole), `FileNotFoundError`, or `HostError`."""
    if code == 0:
        return None
    if code == files.NOT_FOUND and "No such file" in err:
        return FileNotFoundError(2, f"no such file on {host}", path)
    detail = err.strip().splitlines()
    return HostError(host, f"cannot read {path}: {detail[-1] if detail else f'exit {code}'}")


def write_args(path: str, mode: int, size: Optional[int] = None, sha256: Optional[str] = None,
               manifest: Optional[str] = None) -> List[str]:
    """Arguments of the `write` mode: the bytes must number `size` and hash to `sha256` (or to what the
    checkpoint manifest `manifest` on the host records) before they take `path`'s name."""
    if sha256 is not None and manifest is not None:
        raise ValueError("check against sha256 or a manifest, not both")
    check = f"sha256={sha256}" if sha256 else f"manifest={manifest}" if manifest else "-"
    return [str(path), f"{int(mode):o}", "-" if size is None else str(int(size)), check]


def write_outcome(host: str, path: str, code: int, out: str, err: str, sent: int) -> WriteResult:
    """The host's report of a `write` (bytes, sha256), checked against the `sent` bytes; `HostError` if
    the write failed or the count differs."""
    detail = err.strip().splitlines()
    if code != 0:
        raise HostError(host, f"cannot write {path}: {detail[-1] if detail else f'exit {code}'}")
    try:
        report = json.loads(out.strip().splitlines()[-1])
        result = WriteResult(int(report["bytes"]), str(report["sha256"]))
    except (ValueError, IndexError, KeyError, TypeError):
        raise HostError(host, f"writing {path}: no report from the host ({out.strip()[:200]!r})") from None
    if result.size != sent:
        raise HostError(host, f"writing {path}: the host received {result.size} of {sent} bytes")
    return result


# -- sweep


def sweep_args(job_id: str, timeout_s: float) -> List[str]:
    if not job_id:
        raise ValueError("empty job id")
    return [str(job_id), f"{float(timeout_s):g}"]


def sweep_outcome(host: str, job_id: str, code: int, out: str, err: str) -> SweepResult:
    """The sweep's JSON report; `HostError` when there is none."""
    try:
        report = json.loads(out.strip().splitlines()[-1])
        killed = tuple((int(p["pid"]), str(p["name"])) for p in report["killed"])
        left = tuple((int(p["pid"]), str(p["name"])) for p in report["left"])
    except (ValueError, IndexError, KeyError, TypeError):
        detail = err.strip().splitlines()
        raise HostError(host, f"sweeping job {job_id} failed (exit {code}): "
                              f"{detail[-1] if detail else out.strip()[:200]}") from None
    return SweepResult(host, job_id, killed, left)

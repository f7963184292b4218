"""Carrying a checkpoint to a spare: the launcher's copy between two SSH hosts against `scp -3`.

Two private sshd hosts (127.0.3.1 and .2, separate folders). A checkpoint of `--mb` MB (random bytes,
with a real manifest) lies on host 1. Measured in the same run, interleaved, `--repeat` times:

- `launcher copy`: `launcher.ckpt_copy.copy_checkpoint` as the supervisor calls it: host 1's `read`
  mode piped into host 2's `write` mode through this machine's OpenSSH client (the `pipe` route), the
  bytes checked against the manifest's size and sha256 on host 2 while written, then the manifest.
- `launcher copy, through paramiko`: the same with `route="launcher"`: the bytes pass through the
  launcher's paramiko channels (the route without an OpenSSH client).
- `scp -3`: OpenSSH's scp of the same file from host 1 to host 2 through this machine, default ciphers;
  and `scp -3, AES-GCM first`: the same with the cipher preference the launcher's copy uses.
- with `--windows`, the paramiko route again with each channel window / packet size given
  (e.g. `2M/32K,16M/256K`), to see what the channel's flow control costs.

Prints each one's median s and MB/s, its speed relative to `scp -3`, and that ratio for the launcher's
copy. Every copy is checked (sha256) against the original after it is timed.

Usage: python benchmarks/ckpt_copy.py [--mb 600] [--repeat 3] [--windows 2M/32K,16M/256K]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launcher.ckpt_copy import LAUNCHER, PIPE, copy_checkpoint  # noqa: E402
from launcher.transport import ssh as ssh_transport  # noqa: E402
from launcher.transport.factory import open_transport  # noqa: E402
from refinenet import manifest as mf  # noqa: E402
from tests.harness.hosts import ClientKey, ssh_config, start_servers, stop_servers  # noqa: E402

SCP = "scp -3"
SCP_GCM = "scp -3, AES-GCM first"
COPY = "launcher copy"
THROUGH = "launcher copy, through paramiko"


def make_checkpoint(folder: Path, mb: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / mf.ckpt_name(1, 10)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    mf.mark_complete(path, epoch=1, step=10, steps_per_epoch=10)
    return path


def size_of(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def windows(text: Optional[str]) -> List[Tuple[str, int, int]]:
    found = []
    for item in filter(None, (text or "").split(",")):
        window, packet = item.split("/")
        found.append((f"{THROUGH}, window {item}", size_of(window), size_of(packet)))
    return found


def sha256(path: Path) -> str:
    return mf.file_sha256(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--windows", help="paramiko channel window/packet sizes to try, e.g. 2M/32K,16M/256K")
    args = parser.parse_args()
    variants = windows(args.windows)
    with tempfile.TemporaryDirectory(prefix="refinenet-ckpt-copy-") as tmp:
        root = Path(tmp)
        key = ClientKey.create(root / "client")
        servers = start_servers(root / "hosts", key, 2, base="127.0.3.", name="copy-{}")
        try:
            src, dst = servers
            hosts = [s.host() for s in servers]
            config = ssh_config(root / "ssh_config", servers)
            ckpt = make_checkpoint(Path(src.workdir) / "ckpt", args.mb)
            size, digest = ckpt.stat().st_size, sha256(ckpt)
            results: Dict[str, List[float]] = {SCP: [], SCP_GCM: [], COPY: [], THROUGH: []}
            results.update({name: [] for name, _, _ in variants})
            routes = {}

            def scp(name: str, i: int, *options: str) -> None:
                target = Path(dst.workdir) / f"scp-{i}.ckpt"
                started = time.monotonic()
                subprocess.run(["scp", "-3", "-q", "-F", str(config), *options, f"{src.name}:{ckpt}",
                                f"{dst.name}:{target}"], check=True, timeout=1800)
                results[name].append(time.monotonic() - started)
                if sha256(target) != digest:
                    raise SystemExit(f"{name}: the copy differs from the original")
                target.unlink()

            def launcher(name: str, i: int, route: str, window=None, packet=None) -> None:
                saved = ssh_transport.FILE_WINDOW, ssh_transport.FILE_PACKET
                if window:
                    ssh_transport.FILE_WINDOW, ssh_transport.FILE_PACKET = window, packet
                try:
                    with open_transport(hosts[0]) as source, open_transport(hosts[1]) as target:
                        source.connect()
                        target.connect()
                        target_dir = f"{dst.workdir}/copy-{i}"
                        started = time.monotonic()
                        copied = copy_checkpoint(source, str(ckpt), target, target_dir, route=route)
                        results[name].append(time.monotonic() - started)
                finally:
                    ssh_transport.FILE_WINDOW, ssh_transport.FILE_PACKET = saved
                routes[name] = copied.route
                path = Path(copied.path)
                if sha256(path) != digest:
                    raise SystemExit(f"{name}: the copy differs from the original")
                path.unlink()
                path.with_suffix(".json").unlink()

            for i in range(args.repeat):
                scp(SCP, i)
                launcher(COPY, i, None)
                scp(SCP_GCM, i, "-c", ssh_transport.OPENSSH_CIPHERS)
                launcher(THROUGH, i, LAUNCHER)
                for name, window, packet in variants:
                    launcher(name, i, LAUNCHER, window, packet)
            assert routes[COPY] == PIPE
            print(f"checkpoint {size / 1e6:.0f} MB between two SSH hosts, {args.repeat} rounds (median); "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
            base = statistics.median(results[SCP])
            for name, times in results.items():
                t = statistics.median(times)
                print(f"  {name:50s} {t:6.2f} s  {size / 1e6 / t:7.1f} MB/s  x{base / t:.2f} of scp's speed")
            print(f"launcher copy / scp -3 (speed): {base / statistics.median(results[COPY]):.2f}")
        finally:
            stop_servers(servers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

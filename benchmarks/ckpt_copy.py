"""Carrying a checkpoint to a spare: the launcher's copy between two SSH hosts against `scp -3`.

Two private sshd hosts (127.0.3.1 and .2, separate folders). A checkpoint of `--mb` MB (random bytes,
with a real manifest) lies on host 1. Measured in the same run, interleaved, `--repeat` times:

- `launcher copy`: `launcher.ckpt_copy.copy_checkpoint` streams it host 1 -> launcher -> host 2 over
  the hosts' SSH transports (SFTP, 4 MiB pieces), copies the manifest, and verifies the copy on
  host 2 (`refinenet.manifest scan --verify`: sha256). Timed without and with that verification.
- `scp -3`: OpenSSH's scp of the same file from host 1 to host 2 through this machine.

Prints MB/s of each (median) and the ratio launcher / scp.

Usage: python benchmarks/ckpt_copy.py [--mb 600] [--repeat 3]
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launcher.ckpt_copy import copy_checkpoint  # noqa: E402
from launcher.transport.factory import open_transport  # noqa: E402
from refinenet import manifest as mf  # noqa: E402
from tests.harness.hosts import ClientKey, ssh_config, start_servers, stop_servers  # noqa: E402


def make_checkpoint(folder: Path, mb: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / mf.ckpt_name(1, 10)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    mf.mark_complete(path, epoch=1, step=10, steps_per_epoch=10)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="refinenet-ckpt-copy-") as tmp:
        root = Path(tmp)
        key = ClientKey.create(root / "client")
        servers = start_servers(root / "hosts", key, 2, base="127.0.3.", name="copy-{}")
        try:
            src, dst = servers
            hosts = [s.host() for s in servers]
            config = ssh_config(root / "ssh_config", servers)
            ckpt = make_checkpoint(Path(src.workdir) / "ckpt", args.mb)
            size = ckpt.stat().st_size
            results = {"launcher copy": [], "launcher copy + verify": [], "scp -3": []}
            with open_transport(hosts[0]) as source, open_transport(hosts[1]) as target:
                scan = [sys.executable, "-m", "refinenet.manifest", "scan"]
                for i in range(args.repeat):
                    target_dir = f"{dst.workdir}/copy-{i}"
                    started = time.monotonic()
                    copied = copy_checkpoint(source, str(ckpt), target, target_dir,
                                             lambda d: [*scan, d, "--verify"], cwd=str(REPO))
                    results["launcher copy + verify"].append(time.monotonic() - started)
                    results["launcher copy"].append(copied.seconds)
                    Path(target_dir, ckpt.name).unlink()
                    started = time.monotonic()
                    subprocess.run(["scp", "-3", "-q", "-F", str(config), f"{src.name}:{ckpt}",
                                    f"{dst.name}:{dst.workdir}/scp-{i}.ckpt"], check=True, timeout=600)
                    results["scp -3"].append(time.monotonic() - started)
                    Path(dst.workdir, f"scp-{i}.ckpt").unlink()
            print(f"checkpoint {size / 1e6:.0f} MB between two SSH hosts, {args.repeat} rounds (median)")
            base = statistics.median(results["scp -3"])
            for name, times in results.items():
                t = statistics.median(times)
                print(f"  {name:24s} {t:6.2f} s  {size / 1e6 / t:7.1f} MB/s  x{base / t:.2f} of scp's speed")
        finally:
            stop_servers(servers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

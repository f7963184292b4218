"""Validate + place + render a 512-host x 16-device cluster, for each backend; target <= 1 s.

Prints seconds per phase (best of --repeat runs in this process) and the ratio of the total to
the 1 s target. The cluster data is built in memory (YAML parsing is timed separately).

    python benchmarks/render_speed.py [--hosts 512] [--devices 16] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import yaml

from launcher.backends.registry import backend_for
from launcher.placement import place
from launcher.render.orchestrate import render_plan
from launcher.spec.load import load_yaml, parse_cluster
from launcher.workload import workload_for

TARGET_S = 1.0


def cluster(backend: str, device: str, hosts: int, devices: int) -> dict:
    rows = []
    for i in range(hosts):
        host = {"name": f"node{i:04d}", "address": f"10.{i // 250}.{i % 250}.1",
                "ssh": {"user": "train"}, "python": "/opt/venv/bin/python", "workdir": "/opt/refinenet"}
        if device == "cpu":
            host["ranks"] = devices
        else:
            host["devices"] = list(range(devices))
        if device == "ascend":
            host["device_ips"] = [f"172.{16 + d}.{i // 250}.{(i % 250) + 1}" for d in range(devices)]
        rows.append(host)
    return {"name": "big", "backend": backend, "device": device, "hosts": rows, "master": {"port": 8118},
            "job": {"data": "/data/train.mindrecord0", "val_data": "/data/val.lst",
                    "stage_overrides": {"r1": {"epochs": 2, "crop-size": 513}}}}


def best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=512)
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.hosts} hosts x {args.devices} devices = {args.hosts * args.devices} ranks, "
          f"best of {args.repeat}")
    print(f"{'backend/device':<20}{'validate':>10}{'place':>10}{'render':>10}{'total':>10}{'x target':>10}")
    for backend, device in (("rank_table", "ascend"), ("msrun", "ascend"), ("dynamic", "cpu"),
                            ("mpirun", "gpu")):
        data = cluster(backend, device, args.hosts, args.devices)
        t_spec, spec = best(lambda d=data: parse_cluster(d, "bench.yaml"), args.repeat)
        t_place, slots = best(lambda s=spec: place(s), args.repeat)
        workload, backend = workload_for("r1"), backend_for(spec.backend)
        t_render, plan = best(lambda s=spec, sl=slots, w=workload, b=backend: render_plan(
            s, sl, w, b, "/tmp/bench-job", job_id="bench"), args.repeat)
        total = t_spec + t_place + t_render
        assert len(plan.slots) == args.hosts * args.devices
        print(f"{backend + '/' + device:<20}{t_spec:>10.3f}{t_place:>10.3f}{t_render:>10.3f}{total:>10.3f}"
              f"{total / TARGET_S:>10.2f}")
    text = yaml.safe_dump(cluster("rank_table", "ascend", args.hosts, args.devices))
    t_yaml, _ = best(lambda: load_yaml(text, "bench.yaml"), args.repeat)
    print(f"YAML load of the same file ({len(text) // 1024} KiB, libyaml): {t_yaml:.3f} s")


if __name__ == "__main__":
    main()

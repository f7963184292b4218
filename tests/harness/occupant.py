"""A rank that holds its device for a while and says when: the workload of the shared-host tests.

    python3 occupant.py RECORDS HOLD_S [--fail-once FLAG --fail-rank R] [--fail-host NAME]

Appends one JSON line to RECORDS when it starts (`"event": "start"`) and one when it is done (`"end"`),
each with the job (REFINENET_JOB_ID), the simulated host (REFINENET_SIMULATED_HOST, set by the test
sshd), the device (DEVICE_ID), the rank (RANK_ID), its pid and the time; in between it holds HOLD_S
seconds. Each line is one `write` to a file opened with O_APPEND, so lines of concurrent ranks never mix.

Failures (a `"fail"` line, then exit 3): `--fail-once FLAG --fail-rank R`: rank R fails while FLAG does
not exist (failing creates it), so only once; `--fail-host NAME`: every rank on host NAME fails.
Standard library only; runs with any Python 3.
"""
import argparse
import json
import os
import sys
import time


def record(path, event, **fields):
    line = dict(event=event, job=os.environ.get("REFINENET_JOB_ID", ""),
                host=os.environ.get("REFINENET_SIMULATED_HOST", ""),
                device=int(os.environ.get("DEVICE_ID", -1)), rank=int(os.environ.get("RANK_ID", -1)),
                pid=os.getpid(), t=time.time(), **fields)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("records")
    p.add_argument("hold_s", type=float)
    p.add_argument("--fail-once")
    p.add_argument("--fail-rank", type=int)
    p.add_argument("--fail-host")
    args = p.parse_args(argv)
    record(args.records, "start")
    rank, host = int(os.environ.get("RANK_ID", -1)), os.environ.get("REFINENET_SIMULATED_HOST", "")
    fails = args.fail_host is not None and host == args.fail_host
    if args.fail_once and rank == args.fail_rank and not os.path.exists(args.fail_once):
        with open(args.fail_once, "w"):
            fails = True
    if fails:
        time.sleep(min(args.hold_s, 0.2))
        record(args.records, "fail")
        print(f"rank {rank} on {host} fails", flush=True)
        return 3
    time.sleep(args.hold_s)
    record(args.records, "end")
    print(f"rank {rank} on {host} held device {os.environ.get('DEVICE_ID')} for {args.hold_s:g} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

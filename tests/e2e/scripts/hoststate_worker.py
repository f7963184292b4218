"""A process using a host's state as a job's agent would, for the end-to-end tests; runs as any user
with only the standard library, beside a copy of `hoststate.py`.

    hoststate_worker.py ACTION STATE_DIR JSON

Every line it prints is one JSON event with the host's CLOCK_MONOTONIC time `t`.

hold    acquire JSON["request"] (waiting if JSON["wait"]); print "granted"; start JSON["child"] (an argv)
        with the lease's descriptor if given and print "child"; wait for a line or EOF on stdin; print
        "releasing", release, print "released". A refusal prints "refused" with the report, exit 3.
queue   register a ticket for JSON["request"], print "ready", wait for a line on stdin, acquire with the
        ticket (waiting), hold JSON["hold_s"], release; print "granted" and "releasing".
forge   write and lock a lease file named for JSON["job"] by hand, with user fields claiming someone
        else; print "ready"; wait for stdin.
attack  try to remove, rename, replace, write, chmod, lock and hard-link the file JSON["name"] of the
        state directory; print "attacked" with what each attempt gave (an errno name, or "done").
"""
import errno
import fcntl
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hoststate as hs  # noqa: E402


def emit(event, **fields):
    sys.stdout.write(json.dumps(dict(fields, event=event, t=time.monotonic())) + "\n")
    sys.stdout.flush()


def report(r):
    emit("report", state=r["state"], place=r["place"],
         holders=[[h["job"], h["user"]] for h in r["holders"]],
         waiting_for=[[t["job"], t["user"]] for t in r["waiting_for"]])


def hold(state, args):
    request = hs.Request.from_json(args["request"])
    try:
        lease = hs.acquire(state, request, wait=args.get("wait", False), poll_s=args.get("poll_s", 0.05),
                           on_report=report)
    except hs.Refused as e:
        emit("refused", report=e.report)
        return 3
    emit("granted", file=lease.name, pid=os.getpid(), uid=os.geteuid())
    if args.get("child"):
        child = subprocess.Popen(args["child"], pass_fds=[lease.fd])
        emit("child", pid=child.pid)
    sys.stdin.readline()
    emit("releasing")
    emit("released", removed=lease.release())
    return 0


def queue(state, args):
    request = hs.Request.from_json(args["request"])
    ticket = hs.register(state, request)
    emit("ready")
    sys.stdin.readline()
    lease = hs.acquire(state, request, wait=True, ticket=ticket, poll_s=args.get("poll_s", 0.05))
    emit("granted", job=request.job, devices=sorted(request.devices), key=request.key)
    time.sleep(args["hold_s"])
    emit("releasing", job=request.job)
    lease.release()
    ticket.release()
    return 0


def forge(state, args):
    record = {"version": hs.VERSION, "kind": "lease", "job": args["job"], "devices": [0], "slots": 0,
              "capacity": None, "key": 0.0, "pid": os.getpid(), "since": time.time(),
              "user": args["claim_user"], "uid": args["claim_uid"]}
    path = os.path.join(state, "lease." + args["job"] + "." + os.urandom(8).hex())
    with open(path, "w") as f:
        json.dump(record, f)
    os.chmod(path, 0o644)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    emit("ready", file=os.path.basename(path))
    sys.stdin.readline()
    os.unlink(path)
    return 0


def _try(action):
    try:
        action()
        return "done"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _lock(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def attack(state, args):
    path = os.path.join(state, args["name"])
    mine = os.path.join(state, f".attacker.{os.getpid()}")
    with open(mine, "w") as f:
        f.write("{}")
    results = {
        "unlink": _try(lambda: os.unlink(path)),
        "rename": _try(lambda: os.rename(path, path + ".moved")),
        "replace": _try(lambda: os.rename(mine, path)),
        "write": _try(lambda: os.close(os.open(path, os.O_WRONLY))),
        "truncate": _try(lambda: os.truncate(path, 0)),
        "chmod": _try(lambda: os.chmod(path, 0o666)),
        "lock": _try(lambda: _lock(path)),
        "hardlink": _try(lambda: os.link(path, os.path.join(state, "lease.stolen." + os.urandom(8).hex()))),
        "create_same_name": _try(lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))),
    }
    os.unlink(mine)
    emit("attacked", results=results)
    return 0


ACTIONS = {"hold": hold, "queue": queue, "forge": forge, "attack": attack}

if __name__ == "__main__":
    sys.exit(ACTIONS[sys.argv[1]](sys.argv[2], json.loads(sys.argv[3])))

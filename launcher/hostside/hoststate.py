"""The shared state of one host: leases, the wait queue, the cordon and the exclusion records.

Runs on the host with only the standard library (Python 3.6+); it is sent there as source and used by
the host agent (`acquire`, `register`) and by short commands (`main`). The state lives on the host, in
one directory shared by every user of the host (default `DEFAULT_STATE_DIR`), so every launcher, user
and runs folder sees the same state. Layout (flat, so that only the directory's owner matters)::

    STATE_DIR/                         drwxrwxrwt: anyone may add files, only a file's owner may remove it
      lease.<job>.<token>              one per job holding devices/slots here; live while flock()ed
      ticket.<job>.<token>             one per waiting launch; live while flock()ed
      cordon.<seq>.<token>             cordon set/cleared (the newest counts)
      exclusion.<seq>.<token>          a job excluded this host, or the records were cleared
      .tmp.<kind>.<token>              a file being written (renamed into place when complete)

Every file is JSON (``{"version": 1, "kind": ...}``), mode 0644, never changed after it is renamed into
place. The user of a record is the file's owner (its uid), never what the file says. `<token>` is
random, so nobody can create a name before its owner does.

Guarantees:

* A lease or ticket is live exactly while some process holds an exclusive flock() on its file: the
  acquiring process and every process it passes `Lease.fd` to. A SIGKILL, a lost connection or a
  reboot releases it; nothing is guessed from times or pids. A file whose lock is free is leftover
  and ignored (its owner, or root, removes it later).
* Every change and every decision is made under the host mutex: an flock() on the state directory
  itself, so deciding and taking a lease is atomic with respect to every other acquirer.
* Another unprivileged user cannot remove or rename a live lease or ticket (sticky directory), write
  to it (0644), take its lock (held), or forge one in someone else's name (the owner is the kernel's).
  The owner of the state directory, like any directory owner, can remove files in it: where users do
  not trust each other, have root create it (``install -d -m 1777 /var/tmp/refinenet-launch``).
* Grant rule on a host: the request's devices are held by no live lease (slots: the live leases'
  slots plus the request fit the capacity), no earlier live ticket wants any of its devices (slots:
  the earlier tickets' slots are kept free for them), the host is not cordoned, and no live lease of
  the same job (same uid) is still ending. Tickets are ordered by their global key (the launch's wait
  start on its launcher's clock, then the job id), so every host orders two jobs alike.
* Unreadable or malformed state is a `StateError` naming the path; leftovers (unlocked lease and
  ticket files) are not state.

The state directory must be on a local filesystem (flock() on NFS is not the kernel's lock). Two
names for one machine (simulated hosts on one computer) share one state directory unless each is
given its own.
"""
import errno
import fcntl
import json
import os
import pwd
import random
import re
import socket
import stat
import sys
import time

VERSION = 1
#: Where the state lives unless the cluster file says otherwise: survives reboots (unlike /tmp on
#: many systems) and is shared by every user of the host.
DEFAULT_STATE_DIR = "/var/tmp/refinenet-launch"
DIR_MODE = 0o1777
FILE_MODE = 0o644
LEASE, TICKET, CORDON, EXCLUSION = "lease", "ticket", "cordon", "exclusion"
TEMP_PREFIX = ".tmp."
#: How often a waiting acquisition looks again (seconds, randomised by +-25% so waiters do not align).
POLL_S = 0.2
#: How long to wait for the host mutex before giving up with `StateLocked`.
MUTEX_TIMEOUT_S = 60.0
MAX_FILE_BYTES = 1 << 20
MAX_TEXT = 2000

_JOB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_HELD_RE = re.compile(r"^(lease|ticket)\.(.+)\.([0-9a-f]{16})$")
_EVENT_RE = re.compile(r"^(cordon|exclusion)\.([0-9]{1,18})\.([0-9a-f]{16})$")
_OUR_PREFIXES = ("lease.", "ticket.", "cordon.", "exclusion.")
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


# -- errors

class HostStateError(Exception):
    """Base of this module's errors; `path` names the file or folder concerned ("" when none)."""

    def __init__(self, message, path=""):
        Exception.__init__(self, message)
        self.path = path

    def to_json(self):
        return {"type": type(self).__name__, "message": str(self), "path": self.path}


class StateError(HostStateError):
    """The state directory or one of its files is unreadable, malformed or unsafe; names the path."""


class StateLocked(HostStateError):
    """The host mutex stayed taken for `MUTEX_TIMEOUT_S` (a process holds the state directory's lock)."""


class RequestError(HostStateError):
    """A request or command argument is invalid; `field` names it."""

    def __init__(self, field, problem):
        HostStateError.__init__(self, f"{field}: {problem}")
        self.field = field

    def to_json(self):
        return dict(HostStateError.to_json(self), field=self.field)


class Refused(HostStateError):
    """Not granted now; `report` says why (see `evaluate`)."""

    def __init__(self, report):
        HostStateError.__init__(self, report["reason"])
        self.report = report


class Cancelled(HostStateError):
    """A waiting acquisition was cancelled by its caller."""


# -- small helpers

def user_name(uid):
    """The login name of `uid`, or "uid N" when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def format_time(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value, field, required=True):
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise RequestError(field, "must be a non-empty string" if required else "must be a string")
    if len(value) > MAX_TEXT:
        raise RequestError(field, f"longer than {MAX_TEXT} characters")
    return value


def check_job_id(job, field="job"):
    if not isinstance(job, str) or not _JOB_RE.match(job):
        raise RequestError(field, f"must be 1-200 characters of letters, digits, '.', '_' or '-', "
                                  f"not {job!r}")
    return job


def _read_fd(fd, path):
    chunks, size = [], 0
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise StateError(f"{path}: larger than {MAX_FILE_BYTES} bytes", path)
        chunks.append(chunk)


def _try_lock(fd, how):
    """flock(fd, how | LOCK_NB); False when another open file holds a conflicting lock."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


# -- requests

class Request:
    """What one job asks of one host.

    `job`: the job id. Either `devices` (device ids of the job's ranks here: ascend/gpu) or `slots`
    (a count, on a cpu host declaring `capacity` slots; slots are fungible). `key`: when the launch
    began to wait, epoch seconds on the launcher's clock (None: now, on the host's clock); with `job`
    it is the global queue key. `launcher`/`launcher_pid`: the launcher's machine and process, shown
    to others.
    """

    def __init__(self, job, devices=(), slots=0, capacity=None, key=None, launcher="", launcher_pid=None):
        self.job = check_job_id(job)
        if isinstance(devices, (str, bytes)) or not isinstance(devices, (list, tuple, set, frozenset)):
            raise RequestError("devices", "must be a list of device ids")
        if not all(_is_int(d) and d >= 0 for d in devices):
            raise RequestError("devices", f"device ids are integers >= 0, not {list(devices)!r}")
        if len(set(devices)) != len(devices):
            raise RequestError("devices", f"lists a device twice: {list(devices)!r}")
        self.devices = frozenset(devices)
        if not _is_int(slots) or slots < 0:
            raise RequestError("slots", f"must be an integer >= 0, not {slots!r}")
        self.slots = slots
        if bool(self.devices) == bool(slots):
            raise RequestError("devices", "give either devices or slots (one of them, not empty)")
        if slots:
            if not _is_int(capacity) or capacity < slots:
                raise RequestError("capacity", f"the host's slot count, an integer >= slots ({slots}), "
                                               f"not {capacity!r}")
        elif capacity is not None:
            raise RequestError("capacity", "only with slots")
        self.capacity = capacity
        if key is not None and not _is_number(key):
            raise RequestError("key", f"the wait start in epoch seconds, not {key!r}")
        self.key = None if key is None else float(key)
        self.launcher = _text(launcher, "launcher", required=False)
        if launcher_pid is not None and not _is_int(launcher_pid):
            raise RequestError("launcher_pid", "must be an integer")
        self.launcher_pid = launcher_pid

    @classmethod
    def from_json(cls, doc):
        if not isinstance(doc, dict):
            raise RequestError("request", "must be a JSON object")
        known = ("job", "devices", "slots", "capacity", "key", "launcher", "launcher_pid")
        unknown = sorted(set(doc) - set(known) - {"allow_cordoned"})
        if unknown:
            raise RequestError(unknown[0], "unknown field (known: " + ", ".join(known) + ")")
        if "job" not in doc:
            raise RequestError("job", "missing")
        return cls(**{k: doc[k] for k in known if k in doc})

    def to_json(self):
        return {"job": self.job, "devices": sorted(self.devices), "slots": self.slots,
                "capacity": self.capacity, "key": self.key, "launcher": self.launcher,
                "launcher_pid": self.launcher_pid}


# -- what the directory holds

class Held:
    """A live lease or ticket read from the state directory (its lock was held when it was read)."""

    def __init__(self, kind, name, st, doc):
        self.kind, self.name = kind, name
        self.uid, self.ino = st.st_uid, (st.st_dev, st.st_ino)
        self.user = user_name(self.uid)
        self.job = doc["job"]
        self.devices = frozenset(doc["devices"])
        self.slots = doc["slots"]
        self.capacity = doc.get("capacity")
        self.key = float(doc["key"])
        self.launcher = doc.get("launcher", "")
        self.launcher_pid = doc.get("launcher_pid")
        self.pid = doc["pid"]
        self.since = float(doc["since"])

    @property
    def order(self):
        return (self.key, self.job, self.uid)

    def to_json(self):
        return {"job": self.job, "user": self.user, "uid": self.uid, "devices": sorted(self.devices),
                "slots": self.slots, "capacity": self.capacity, "key": self.key, "since": self.since,
                "pid": self.pid, "launcher": self.launcher, "launcher_pid": self.launcher_pid,
                "file": self.name}


class Event:
    """A cordon or exclusion record: who (the file's owner), when, and its fields."""

    def __init__(self, kind, seq, name, st, doc):
        self.kind, self.seq, self.name = kind, seq, name
        self.uid, self.ino = st.st_uid, (st.st_dev, st.st_ino)
        self.by = user_name(self.uid)
        self.action = doc["action"]
        self.time = float(doc["time"])
        self.doc = doc

    def to_json(self):
        out = {"action": self.action, "by": self.by, "uid": self.uid, "time": self.time, "seq": self.seq}
        for field in ("why", "reason", "job"):
            if field in self.doc:
                out[field] = self.doc[field]
        return out


class Scan:
    """Everything the state directory holds at one moment (read under the host mutex)."""

    def __init__(self):
        self.leases, self.tickets, self.events, self.leftovers = [], [], [], []

    def cordon(self):
        """The cordon as a dict: {"cordoned": bool, "by", "uid", "why", "since"} (the newest record),
        or {"cordoned": False} when never set."""
        records = [e for e in self.events if e.kind == CORDON]
        if not records:
            return {"cordoned": False}
        last = max(records, key=lambda e: (e.seq, e.name))
        return {"cordoned": last.action == "set", "by": last.by, "uid": last.uid,
                "why": last.doc.get("why", ""), "since": last.time}

    def exclusions(self):
        """Exclusion records since the last clear, oldest first."""
        records = sorted((e for e in self.events if e.kind == EXCLUSION), key=lambda e: (e.seq, e.name))
        clears = [i for i, e in enumerate(records) if e.action == "clear"]
        start = clears[-1] + 1 if clears else 0
        return [e for e in records[start:] if e.action == "record"]

    def queue(self):
        return sorted(self.tickets, key=lambda t: t.order)

    def next_seq(self):
        return max([e.seq for e in self.events] + [0]) + 1


def _field(doc, name, check, what, path):
    if name not in doc or not check(doc[name]):
        raise StateError(f"{path}: field {name!r} must be {what}, found {doc.get(name)!r}", path)
    return doc[name]


def _parse(raw, kind, path):
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise StateError(f"{path}: not a valid state record ({e})", path) from None
    if not isinstance(doc, dict):
        raise StateError(f"{path}: not a JSON object", path)
    if doc.get("version") != VERSION:
        raise StateError(f"{path}: record version {doc.get('version')!r}, this program reads version "
                         f"{VERSION} (a different refinenet-launch wrote it)", path)
    if doc.get("kind") != kind:
        raise StateError(f"{path}: holds a {doc.get('kind')!r} record where a {kind!r} record belongs",
                         path)
    return doc


def _parse_held(raw, kind, job, path):
    doc = _parse(raw, kind, path)
    _field(doc, "job", lambda v: v == job, f"the job id of its name ({job})", path)
    _field(doc, "devices", lambda v: isinstance(v, list) and all(_is_int(d) and d >= 0 for d in v),
           "a list of device ids", path)
    _field(doc, "slots", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path)
    _field(doc, "key", _is_number, "a number", path)
    _field(doc, "pid", _is_int, "an integer", path)
    _field(doc, "since", _is_number, "a number", path)
    return doc


def _parse_event(raw, kind, path):
    doc = _parse(raw, kind, path)
    actions = ("set", "clear") if kind == CORDON else ("record", "clear")
    _field(doc, "action", lambda v: v in actions, " or ".join(actions), path)
    _field(doc, "time", _is_number, "a number", path)
    if kind == EXCLUSION and doc["action"] == "record":
        _field(doc, "reason", lambda v: isinstance(v, str), "a string", path)
        _field(doc, "job", lambda v: isinstance(v, str), "a string", path)
    return doc


# -- the state directory

class StateDir:
    """An opened state directory: the host mutex, and every read and write made under it.

    `create`: make the directory (mode 1777) when missing; otherwise a missing directory reads as
    empty (`exists` False). Raises `StateError` when it is not a directory, is a symbolic link, is
    writable by others without the sticky bit, or is not usable by this user.
    """

    def __init__(self, path, create=True, write=True):
        self.path = os.path.abspath(path)
        self.fd = None
        self.exists = self._open(create, write)

    def _open(self, create, write):
        for attempt in range(40):
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                if not create:
                    return False
                self._create()
                continue
            except OSError as e:
                raise StateError(f"state directory {self.path}: {e.strerror}", self.path) from None
            problem = self._problem(st, write)
            if problem is None:
                break
            # a directory made a moment ago by another user may not have its mode 1777 yet
            if time.time() - st.st_ctime > 1.0 or attempt == 39:
                raise StateError(f"state directory {self.path} {problem}", self.path)
            time.sleep(0.025)
        else:
            raise StateError(f"state directory {self.path} keeps disappearing", self.path)
        flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.path, flags)
        except OSError as e:
            raise StateError(f"state directory {self.path}: {e.strerror}", self.path) from None
        self.stat = os.fstat(self.fd)
        if (self.stat.st_dev, self.stat.st_ino) != (st.st_dev, st.st_ino):
            self.close()
            raise StateError(f"state directory {self.path} was replaced while being opened", self.path)
        return True

    def _problem(self, st, write):
        """Why the directory `st` cannot hold the state, or None."""
        if stat.S_ISLNK(st.st_mode):
            return "is a symbolic link; give the real path"
        if not stat.S_ISDIR(st.st_mode):
            return "is not a directory"
        mode, owner = stat.S_IMODE(st.st_mode), user_name(st.st_uid)
        if mode & 0o022 and not mode & stat.S_ISVTX:
            return (f"(mode {mode:04o}, owner {owner}) is writable by others but not sticky: anyone could "
                    "remove another user's lease (chmod 1777 it)")
        if not os.access(self.path, os.R_OK | os.X_OK | (os.W_OK if write else 0)):
            return f"(mode {mode:04o}, owner {owner}) is not {'writable' if write else 'readable'} by " \
                   f"uid {os.geteuid()}"
        return None

    def _create(self):
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, exist_ok=True)
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            return  # another process made it first: checked like any existing directory
        except OSError as e:
            raise StateError(f"cannot create state directory {self.path}: {e.strerror}",
                             self.path) from None
        os.chmod(self.path, DIR_MODE)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def owner(self):
        return user_name(self.stat.st_uid) if self.exists else None

    # -- the host mutex

    def locked(self, exclusive=True, timeout=MUTEX_TIMEOUT_S):
        """The host mutex as a context manager: exclusive to change state, shared to read it."""
        return _Mutex(self, exclusive, timeout)

    # -- reading

    def scan(self):
        """Everything the directory holds; call under the mutex. Leftovers are listed apart, not as state."""
        scan = Scan()
        if not self.exists:
            return scan
        try:
            names = os.listdir(self.fd)
        except OSError as e:
            raise StateError(f"state directory {self.path}: {e.strerror}", self.path) from None
        seen = set()
        for name in sorted(names):
            if name.startswith(TEMP_PREFIX):
                self._read_locked_file(name, None, seen, scan)
                continue
            held = _HELD_RE.match(name)
            event = _EVENT_RE.match(name)
            if held:
                self._read_locked_file(name, held, seen, scan)
            elif event:
                self._read_event(name, event, scan)
            elif name.startswith(_OUR_PREFIXES):
                path = os.path.join(self.path, name)
                raise StateError(f"{path}: not a name this program writes (lease.<job>.<token>, "
                                 "cordon.<seq>.<token>, ...)", path)
        return scan

    def _open_entry(self, name):
        path = os.path.join(self.path, name)
        try:
            fd = os.open(name, _OPEN_READ, dir_fd=self.fd)
        except FileNotFoundError:
            return None, None, path
        except OSError as e:
            why = "a symbolic link" if e.errno == errno.ELOOP else e.strerror
            raise StateError(f"{path}: cannot be read ({why})", path) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise StateError(f"{path}: not a regular file", path)
        return fd, st, path

    def _read_locked_file(self, name, match, seen, scan):
        fd, st, path = self._open_entry(name)
        if fd is None:
            return
        try:
            if (st.st_dev, st.st_ino) in seen:
                return  # a second name (hard link) of a file already read
            seen.add((st.st_dev, st.st_ino))
            if _try_lock(fd, fcntl.LOCK_SH):
                scan.leftovers.append((name, st))
                return
            if match is None:
                return  # a file being written
            kind, job = match.group(1), match.group(2)
            doc = _parse_held(_read_fd(fd, path), kind, job, path)
            (scan.leases if kind == LEASE else scan.tickets).append(Held(kind, name, st, doc))
        finally:
            os.close(fd)

    def _read_event(self, name, match, scan):
        fd, st, path = self._open_entry(name)
        if fd is None:
            return
        try:
            kind = match.group(1)
            doc = _parse_event(_read_fd(fd, path), kind, path)
            scan.events.append(Event(kind, int(match.group(2)), name, st, doc))
        finally:
            os.close(fd)

    # -- writing (under the exclusive mutex)

    def write_new(self, kind, middle, record, hold):
        """Write `record` as `<kind>.<middle>.<token>`, whole and visible at once (written under a
        temporary name, then renamed). With `hold`, returns (fd, name, inode) where fd is a read-only
        descriptor holding the file's exclusive lock since before the file became visible."""
        token = os.urandom(8).hex()
        tmp = f"{TEMP_PREFIX}{kind}.{token}"
        name = f"{kind}.{middle}.{token}"
        path = os.path.join(self.path, name)
        data = (json.dumps(dict(record, version=VERSION, kind=kind), sort_keys=True) + "\n").encode("utf-8")
        wfd = rfd = None
        try:
            wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=self.fd)
            rfd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.fd)
            ino = os.fstat(rfd).st_ino
            if ino != os.fstat(wfd).st_ino or not _try_lock(rfd, fcntl.LOCK_EX):
                raise OSError(errno.EEXIST, "temporary file replaced while being written")
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view):]
            if not hold:  # a record must survive a crash; a lease or ticket dies with it anyway
                os.fsync(wfd)
            os.fchmod(wfd, FILE_MODE)
            os.close(wfd)
            wfd = None
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            if not hold:
                os.fsync(self.fd)
        except OSError as e:
            for fd in (wfd, rfd):
                if fd is not None:
                    os.close(fd)
            try:
                os.unlink(tmp, dir_fd=self.fd)
            except OSError:
                pass
            raise StateError(f"{path}: cannot write ({e.strerror or e})", path) from None
        if hold:
            return rfd, name, (self.stat.st_dev, ino)
        os.close(rfd)
        return None, name, (self.stat.st_dev, ino)

    def remove_if_unlocked(self, name, ino):
        """Remove `name` if it is still the file `ino` and no process holds its lock; True if removed."""
        try:
            fd = os.open(name, _OPEN_READ, dir_fd=self.fd)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != ino or not _try_lock(fd, fcntl.LOCK_EX):
                return False
            os.unlink(name, dir_fd=self.fd)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def remove_own(self, name, ino):
        """Remove the record `name` (this user's, or anyone's for root) if it is still the file `ino`."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == ino and _mine(st.st_uid):
                os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass

    def tidy(self, scan):
        """Remove this user's leftovers (root: everyone's) and superseded cordon/exclusion records."""
        for name, st in scan.leftovers:
            if _mine(st.st_uid):
                self.remove_if_unlocked(name, (st.st_dev, st.st_ino))
        cordons = sorted((e for e in scan.events if e.kind == CORDON), key=lambda e: (e.seq, e.name))
        exclusions = sorted((e for e in scan.events if e.kind == EXCLUSION), key=lambda e: (e.seq, e.name))
        clears = [i for i, e in enumerate(exclusions) if e.action == "clear"]
        superseded = cordons[:-1] + (exclusions[:clears[-1]] if clears else [])
        for event in superseded:
            self.remove_own(event.name, event.ino)


def _mine(uid):
    euid = os.geteuid()
    return euid == 0 or uid == euid


class _Mutex:
    def __init__(self, state_dir, exclusive, timeout):
        self.dir, self.exclusive, self.timeout = state_dir, exclusive, timeout

    def __enter__(self):
        if not self.dir.exists:
            return self.dir
        how = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline, pause = time.monotonic() + self.timeout, 0.001
        while not _try_lock(self.dir.fd, how):
            if time.monotonic() > deadline:
                raise StateLocked(f"state directory {self.dir.path}: its lock stayed taken for "
                                  f"{self.timeout:.0f} s (a process holds it)", self.dir.path)
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 0.02)
        try:
            now = os.stat(self.dir.path, follow_symlinks=False)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (self.dir.stat.st_dev, self.dir.stat.st_ino):
            fcntl.flock(self.dir.fd, fcntl.LOCK_UN)
            raise StateError(f"state directory {self.dir.path} was removed or replaced while in use",
                             self.dir.path)
        return self.dir

    def __exit__(self, *exc):
        if self.dir.exists:
            fcntl.flock(self.dir.fd, fcntl.LOCK_UN)
        return False


# -- the grant rule

def evaluate(request, key, scan, uid, allow_cordoned=False):
    """Would `request` (queue key `key`, by `uid`) be granted now, and if not why: a report dict.

    {"granted", "state": granted|cordoned|ending|busy|queued, "reason", "job", "key",
     "place": 1 + the earlier waiters it waits for, "holders": leases in its way,
     "waiting_for": earlier tickets in its way (queue order), "cordon"}.
    """
    me = (request.job, uid)
    order = (key, request.job, uid)
    leasing = set((h.job, h.uid) for h in scan.leases)
    ending = [h for h in scan.leases if (h.job, h.uid) == me]
    others = [h for h in scan.leases if (h.job, h.uid) != me]
    holders = [h for h in others if h.devices & request.devices]
    earlier = [t for t in scan.queue() if (t.job, t.uid) != me and (t.job, t.uid) not in leasing
               and t.order < order]
    waiting = [t for t in earlier if t.devices & request.devices]
    if request.slots:
        used = sum(h.slots for h in others)
        reserved = [t for t in earlier if t.slots]
        if used + request.slots > request.capacity:
            holders += [h for h in others if h.slots and h not in holders]
        if used + sum(t.slots for t in reserved) + request.slots > request.capacity:
            waiting += [t for t in reserved if t not in waiting]
    waiting.sort(key=lambda t: t.order)
    cordon = scan.cordon()
    if cordon["cordoned"] and not allow_cordoned:
        state = "cordoned"
        reason = f"host cordoned by {cordon['by']} since {format_time(cordon['since'])}: {cordon['why']}"
    elif ending:
        state = "ending"
        reason = (f"job {request.job} already holds a lease here (taken by pid {ending[0].pid}); a job "
                  "holds one lease per host: a new one once the last process holding it is gone")
    elif holders:
        state = "busy"
        reason = "held by " + "; ".join(f"job {h.job} of {h.user} since {format_time(h.since)}"
                                        for h in holders)
    elif waiting:
        state = "queued"
        reason = "waiting behind " + "; ".join(f"job {t.job} of {t.user}" for t in waiting)
    else:
        state, reason = "granted", "granted"
    return {"granted": state == "granted", "state": state, "reason": reason, "job": request.job,
            "key": key, "place": 1 + len(waiting), "holders": [h.to_json() for h in ending + holders],
            "waiting_for": [t.to_json() for t in waiting], "cordon": cordon}


def _signature(report):
    return (report["state"], report["place"], tuple((h["job"], h["uid"]) for h in report["holders"]),
            tuple((t["job"], t["uid"]) for t in report["waiting_for"]))


# -- leases and tickets

class _HeldFile:
    """A lease or ticket this process holds: its file's lock lives in the open file `fd`."""

    kind = None

    def __init__(self, state_dir, name, fd, ino, record):
        self._dir, self.name, self._fd, self.ino, self.record = state_dir, name, fd, ino, record

    @property
    def fd(self):
        """The descriptor holding the lock (None once released)."""
        return self._fd

    @property
    def path(self):
        return os.path.join(self._dir.path, self.name)

    @property
    def job(self):
        return self.record["job"]

    @property
    def key(self):
        return self.record["key"]

    def release(self):
        """Close this process's descriptor and remove the file unless another process (a child given
        the descriptor) still holds the lock. True when the file is gone, False when it is still held
        (it then stays live until its last holder is gone). Idempotent."""
        if self._fd is None:
            return False
        removed = False
        try:
            with self._dir.locked():
                probe = None
                try:
                    probe = os.open(self.name, _OPEN_READ, dir_fd=self._dir.fd)
                    st = os.fstat(probe)
                    if (st.st_dev, st.st_ino) != self.ino:
                        os.close(probe)
                        probe = None
                except OSError:
                    probe = None
                os.close(self._fd)
                self._fd = None
                if probe is not None:
                    try:
                        if _try_lock(probe, fcntl.LOCK_EX):
                            os.unlink(self.name, dir_fd=self._dir.fd)
                            removed = True
                    finally:
                        os.close(probe)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._dir.close()
        return removed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def __repr__(self):
        return f"<{type(self).__name__} {self.path} of job {self.job}>"


class Lease(_HeldFile):
    """A granted lease on this host's devices or slots.

    It is held while any process holds `fd`: give it to every process started for the job (e.g.
    ``subprocess.Popen(argv, pass_fds=[lease.fd])``; it is not inheritable otherwise), so the lease
    is free only when the last of them is gone, whatever killed this process. `record` is what others
    see (job, devices, slots, key, pid, since, launcher, launcher_pid). `release()` when the job is
    over on this host.
    """

    kind = LEASE

    @property
    def devices(self):
        return self.record["devices"]

    @property
    def slots(self):
        return self.record["slots"]


class Ticket(_HeldFile):
    """A waiting launch's place in this host's queue; live while this process holds it (never give
    `fd` to children: a ticket must go with its waiter)."""

    kind = TICKET


def _record(request, key):
    return {"job": request.job, "devices": sorted(request.devices), "slots": request.slots,
            "capacity": request.capacity, "key": key, "launcher": request.launcher,
            "launcher_pid": request.launcher_pid, "pid": os.getpid(), "since": time.time()}


def _take(cls, state_dir, request, key):
    record = _record(request, key)
    fd, name, ino = state_dir.write_new(cls.kind, request.job, record, hold=True)
    return cls(state_dir, name, fd, ino, record)


def register(state_dir, request):
    """Put `request` in this host's queue: a `Ticket` held by this process with key `request.key`
    (None: now). The caller keeps it while it waits (on this and other hosts) and releases it once
    it holds every lease it needs, or gives up."""
    sd = StateDir(state_dir, create=True)
    key = time.time() if request.key is None else request.key
    try:
        with sd.locked():
            sd.tidy(sd.scan())
            return _take(Ticket, sd, request, key)
    except BaseException:
        sd.close()
        raise


def try_acquire(state_dir, request, ticket=None, allow_cordoned=False):
    """One all-or-nothing attempt: a `Lease` on every device/slot of `request`, or `Refused` with the
    report. The queue key is `ticket.key` when the caller holds a ticket here, else `request.key`
    (None: now, so a launch that does not wait counts as a ticket taken now)."""
    sd = StateDir(state_dir, create=True)
    try:
        return _attempt(sd, request, _key_of(request, ticket), allow_cordoned)
    except BaseException:
        sd.close()
        raise


def _key_of(request, ticket):
    if ticket is not None:
        if ticket.job != request.job:
            raise RequestError("ticket", f"belongs to job {ticket.job}, not {request.job}")
        return ticket.key
    return time.time() if request.key is None else request.key


def _attempt(sd, request, key, allow_cordoned):
    with sd.locked():
        scan = sd.scan()
        sd.tidy(scan)
        report = evaluate(request, key, scan, os.geteuid(), allow_cordoned)
        if not report["granted"]:
            raise Refused(report)
        return _take(Lease, sd, request, key)


def acquire(state_dir, request, wait=False, on_report=None, cancel=None, poll_s=POLL_S, ticket=None,
            allow_cordoned=False):
    """A `Lease` on every device/slot of `request` on this host, all or nothing.

    Without `wait`: one attempt (`try_acquire`). With `wait`: hold a ticket (the caller's `ticket`,
    or one registered here and released on return) and look again every `poll_s` until granted;
    `on_report(report)` is called with `evaluate`'s report whenever the place, the holders or the
    earlier waiters change; `cancel` (a `threading.Event`, or a callable returning True to stop) ends
    the wait with `Cancelled`. A cordoned host refuses at once (`Refused`, state "cordoned"), waiting
    or not: a repair has no foreseeable end.
    """
    own = None
    if wait and ticket is None:
        own = ticket = register(state_dir, request)
    sd = StateDir(state_dir, create=True)
    try:
        key = _key_of(request, ticket)
        last = None
        while True:
            try:
                return _attempt(sd, request, key, allow_cordoned)
            except Refused as refused:
                report = refused.report
                if not wait or report["state"] == "cordoned":
                    raise
            signature = _signature(report)
            if on_report is not None and signature != last:
                on_report(report)
            last = signature
            if _pause(cancel, poll_s * random.uniform(0.75, 1.25)):
                raise Cancelled(f"waiting for job {request.job} cancelled", sd.path)
    except BaseException:
        sd.close()
        raise
    finally:
        if own is not None:
            own.release()


def _pause(cancel, seconds):
    """Sleep `seconds`; True when `cancel` asks to stop."""
    if cancel is None:
        time.sleep(seconds)
        return False
    if hasattr(cancel, "wait"):
        return bool(cancel.wait(seconds))
    if cancel():
        return True
    time.sleep(seconds)
    return bool(cancel())


def check(state_dir, request, allow_cordoned=False):
    """Would `request` be granted now (key: `request.key`, None: now)? `evaluate`'s report; changes
    nothing (a missing state directory is an empty one)."""
    sd = StateDir(state_dir, create=False, write=False)
    try:
        with sd.locked(exclusive=False):
            scan = sd.scan()
        key = time.time() if request.key is None else request.key
        return evaluate(request, key, scan, os.geteuid(), allow_cordoned)
    finally:
        sd.close()


# -- cordon and exclusion records

def _add_event(state_dir, kind, record):
    """Write one cordon/exclusion record under the mutex; the state before and after it."""
    sd = StateDir(state_dir, create=True)
    try:
        with sd.locked():
            before = sd.scan()
            sd.write_new(kind, f"{before.next_seq():010d}", dict(record, time=time.time()), hold=False)
            after = sd.scan()
            sd.tidy(after)
            return before, after
    finally:
        sd.close()


def cordon(state_dir, why):
    """Take the host out of new placements, for every user, until `uncordon`; who is the caller's uid.
    Returns the cordon (see `Scan.cordon`)."""
    return _add_event(state_dir, CORDON, {"action": "set", "why": _text(why, "why")})[1].cordon()


def uncordon(state_dir, why=""):
    """Put the host back into service (any user may); returns the cordon."""
    return _add_event(state_dir, CORDON, {"action": "clear",
                                          "why": _text(why, "why", required=False)})[1].cordon()


def record_exclusion(state_dir, reason, job):
    """Remember that job `job` excluded this host because of `reason`; returns the records since the
    last clear, oldest first (dicts: reason, job, time, by, uid, seq)."""
    _, after = _add_event(state_dir, EXCLUSION, {"action": "record", "reason": _text(reason, "reason"),
                                                 "job": check_job_id(job)})
    return [e.to_json() for e in after.exclusions()]


def clear_exclusions(state_dir, why=""):
    """Forget the exclusion records (any user may: the host was repaired); returns how many were cleared."""
    before, _ = _add_event(state_dir, EXCLUSION, {"action": "clear",
                                                  "why": _text(why, "why", required=False)})
    return len(before.exclusions())


def read_state(state_dir):
    """A `Scan` of the state directory, read under the shared mutex (empty when it does not exist)."""
    sd = StateDir(state_dir, create=False, write=False)
    try:
        with sd.locked(exclusive=False):
            return sd.scan()
    finally:
        sd.close()


def exclusions(state_dir):
    return [e.to_json() for e in read_state(state_dir).exclusions()]


# -- the host at a glance

def _meminfo():
    try:
        with open("/proc/meminfo") as f:
            values = dict(line.split(":", 1) for line in f if ":" in line)
        kib = {k: int(v.split()[0]) for k, v in values.items() if k in ("MemTotal", "MemAvailable")}
        return {"total_bytes": kib["MemTotal"] * 1024, "available_bytes": kib["MemAvailable"] * 1024}
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _disk(path):
    probe = path
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        st = os.statvfs(probe)
    except OSError as e:
        return {"path": path, "error": e.strerror}
    return {"path": path, "total_bytes": st.f_blocks * st.f_frsize, "free_bytes": st.f_bfree * st.f_frsize,
            "available_bytes": st.f_bavail * st.f_frsize}


def snapshot(state_dir, paths=()):
    """Everything a cluster view needs from this host, as plain JSON: live leases, the queue (live
    tickets in order), the cordon, exclusion records since the last clear, load average, memory, and
    free disk of the state directory's filesystem and of each of `paths`. `now` is the host's clock,
    to which every time in it belongs."""
    sd = StateDir(state_dir, create=False, write=False)
    try:
        with sd.locked(exclusive=False):
            scan = sd.scan()
        info = {"path": sd.path, "exists": sd.exists}
        if sd.exists:
            info.update(owner=sd.owner(), mode=f"{stat.S_IMODE(sd.stat.st_mode):04o}")
    finally:
        sd.close()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"version": VERSION, "host": socket.gethostname(), "now": time.time(), "state_dir": info,
            "leases": [h.to_json() for h in sorted(scan.leases, key=lambda h: h.since)],
            "queue": [t.to_json() for t in scan.queue()], "cordon": scan.cordon(),
            "exclusions": [e.to_json() for e in scan.exclusions()], "load": load, "memory": _meminfo(),
            "disk": [_disk(p) for p in [sd.path] + list(paths)]}


# -- short commands

def _paths(payload):
    paths = payload.get("paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise RequestError("paths", "must be a list of paths")
    return paths


def _allow(payload):
    allow = payload.get("allow_cordoned", False)
    if not isinstance(allow, bool):
        raise RequestError("allow_cordoned", "must be true or false")
    return allow


COMMANDS = {
    "snapshot": lambda d, p: snapshot(d, _paths(p)),
    "show": lambda d, p: snapshot(d, _paths(p)),
    "check": lambda d, p: check(d, Request.from_json(p), _allow(p)),
    "cordon": lambda d, p: cordon(d, p.get("why")),
    "uncordon": lambda d, p: uncordon(d, p.get("why", "")),
    "record-exclusion": lambda d, p: {"exclusions": record_exclusion(d, p.get("reason"), p.get("job"))},
    "clear-exclusions": lambda d, p: {"cleared": clear_exclusions(d, p.get("why", ""))},
    "exclusions": lambda d, p: {"exclusions": exclusions(d)},
}

USAGE = "usage: hoststate COMMAND STATE_DIR [JSON|-]  (commands: " + ", ".join(sorted(COMMANDS)) + ")"


def main(argv=None):
    """`COMMAND STATE_DIR [JSON]`: one JSON object in (the argument, `-` for stdin, default {}), one
    JSON object out on stdout. Exit 0 with the result; exit 2 with {"error": {type, message, path,
    field}} for a bad request or unreadable state. `check` answers with exit 0 whether granted or not.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if len(argv) not in (2, 3) or argv[0] not in COMMANDS:
            raise RequestError("command", USAGE)
        text = argv[2] if len(argv) == 3 else "{}"
        if text == "-":
            text = sys.stdin.read()
        try:
            payload = json.loads(text)
        except ValueError as e:
            raise RequestError("argument", f"not valid JSON ({e})") from None
        if not isinstance(payload, dict):
            raise RequestError("argument", "must be a JSON object")
        result = COMMANDS[argv[0]](argv[1], payload)
    except HostStateError as e:
        sys.stdout.write(json.dumps({"error": e.to_json()}) + "\n")
        return 2
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

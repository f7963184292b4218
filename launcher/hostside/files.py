"""Files on a host over the same channel as every other command: no SFTP subsystem needed.

Mode `read PATH`: the file's bytes on stdout (sendfile where the kernel allows), then wait until the
pipe holds nothing unread (`procs.drain`). Exit 1 and `No such file: PATH` on stderr when it does not
exist, 3 for any other error it cannot be read for, 6 when its reader went away before the end.

Mode `write PATH MODE SIZE CHECK`: stdin (to its end) into PATH, atomically: the bytes go into a
temporary file next to PATH (parent folders are created), are hashed (sha256) while they are written,
fsynced, checked, given the octal MODE and renamed onto PATH (the folder fsynced too). SIZE is the
byte count expected, or `-` when the sender does not know it up front: then the stream must close with
`end_marker(count)`, so a sender that stops half-way (its source failed, it was killed) never leaves a
truncated file. CHECK is `-`, `sha256=HEX`, or `manifest=FILE`: the `size` and `sha256` fields of a
checkpoint manifest (refinenet/manifest.py) already on this host. Nothing takes PATH's name unless
every check passes. Stdout: one JSON line, ``{"bytes": N, "sha256": HEX}``. Exit 5 (and the reason on
stderr) when the bytes do not match, 3 when writing fails, 2 for bad usage.
"""
import hashlib
import json
import os
import sys

from launcher.hostside import procs

NOT_FOUND = 1
USAGE = 2
FAILED = 3
MISMATCH = 5
READER_GONE = 6
CHUNK = 1 << 20
END = b"\nrefinenet-write-end "
END_SIZE = len(END) + 20


class Mismatch(ValueError):
    """The bytes received are not the ones expected (count or digest)."""


def end_marker(count):
    """What closes a `write` stream of unannounced size: the count of the bytes before it."""
    return END + b"%020d" % count


def until_end_marker(chunks):
    """The bytes of `chunks` before its closing `end_marker`; `Mismatch` at the end when the stream
    stopped without one or the count it gives differs."""
    tail, count = b"", 0
    for data in chunks:
        if tail:
            data = tail + data
        if len(data) > END_SIZE:
            body = data[:-END_SIZE]
            count += len(body)
            yield body
            tail = data[-END_SIZE:]
        else:
            tail = data
    if len(tail) != END_SIZE or not tail.startswith(END) or not tail[len(END):].isdigit():
        raise Mismatch(f"the stream stopped before its end ({count + len(tail)} bytes received)")
    if int(tail[len(END):]) != count:
        raise Mismatch(f"received {count} of {int(tail[len(END):])} bytes")


def read_chunks(path, chunk=CHUNK):
    """The file's contents in pieces of at most `chunk` bytes."""
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            if not data:
                return
            yield data


def expected_from_manifest(path):
    """(size, sha256) recorded by the checkpoint manifest at `path`; `ValueError` if it has none."""
    with open(path, "rb") as f:
        data = json.loads(f.read().decode("utf-8"))
    digest = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(digest, str) or len(digest) != 64:
        raise ValueError(f"{path} records no sha256")
    size = data.get("size")
    return (size if isinstance(size, int) and not isinstance(size, bool) else None), digest.lower()


def _temporary(path):
    """A new file next to `path` (created exclusively, 0600), as (fd, its path)."""
    folder, name = os.path.split(path)
    while True:
        tmp = os.path.join(folder, f".{name}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue


def write_atomic(path, chunks, mode=0o644, size=None, sha256=None):
    """Write `chunks` to `path` atomically (see the module's docstring); (bytes, sha256 hex).
    `Mismatch` when `size` or `sha256` is given and the bytes differ: `path` is left as it was."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = _temporary(path)
    digest, count = hashlib.sha256(), 0
    try:
        try:
            for data in chunks:
                digest.update(data)
                procs.write_all(fd, data)
                count += len(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        got = digest.hexdigest()
        if size is not None and count != size:
            raise Mismatch(f"received {count} of {size} bytes")
        if sha256 is not None and got != sha256.lower():
            raise Mismatch(f"sha256 of the {count} bytes received is {got}, expected {sha256}")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder or ".")
    return count, got


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _widen_pipe(fd):
    """Let the other end of pipe `fd` move up to 1 MiB before it waits for us: fewer wake-ups on both
    sides (sshd's session, srun's step)."""
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, CHUNK)  # F_SETPIPE_SZ; fails harmlessly on what is not a pipe
    except (ImportError, OSError):
        pass


def _stdin_chunks():
    _widen_pipe(0)
    while True:
        data = os.read(0, CHUNK)
        if not data:
            return
        yield data


def _copy_out(fd):
    """The open file `fd` to stdout, by sendfile where the kernel allows it."""
    _widen_pipe(1)
    offset = 0
    while True:
        try:
            sent = os.sendfile(1, fd, offset, CHUNK)
        except (OSError, AttributeError):
            break
        if sent == 0:
            return
        offset += sent
    os.lseek(fd, offset, os.SEEK_SET)
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            return
        procs.write_all(1, data)


def read_mode(args):
    """`read PATH`: see the module's docstring."""
    if len(args) != 1:
        sys.stderr.write("usage: read PATH\n")
        return USAGE
    try:
        fd = os.open(args[0], os.O_RDONLY)
    except FileNotFoundError:
        sys.stderr.write(f"No such file: {args[0]}\n")
        return NOT_FOUND
    except OSError as exc:
        sys.stderr.write(f"cannot read {args[0]}: {exc.strerror or exc}\n")
        return FAILED
    try:
        _copy_out(fd)
    except BrokenPipeError:
        sys.stderr.write(f"{args[0]}: the reader of stdout went away before the end\n")
        return READER_GONE
    except OSError as exc:
        sys.stderr.write(f"cannot read {args[0]}: {exc.strerror or exc}\n")
        return FAILED
    finally:
        os.close(fd)
    procs.drain((1,))
    return 0


def parse_write_args(args):
    """(path, mode, size, check) of `write PATH MODE SIZE CHECK`; `ValueError` naming the bad one."""
    if len(args) != 4:
        raise ValueError("usage: write PATH MODE SIZE CHECK")
    path, mode, size, check = args
    try:
        mode = int(mode, 8)
    except ValueError:
        raise ValueError(f"write: MODE must be octal, got {mode!r}") from None
    if size == "-":
        size = None
    elif size.isdigit():
        size = int(size)
    else:
        raise ValueError(f"write: SIZE must be a byte count or -, got {size!r}")
    kind, _, value = check.partition("=")
    if check != "-" and (kind not in ("sha256", "manifest") or not value):
        raise ValueError(f"write: CHECK must be -, sha256=HEX or manifest=FILE, got {check!r}")
    return path, mode, size, (None if check == "-" else (kind, value))


def write_mode(args):
    """`write PATH MODE SIZE CHECK`: see the module's docstring."""
    try:
        path, mode, size, check = parse_write_args(args)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return USAGE
    chunks = _stdin_chunks() if size is not None else until_end_marker(_stdin_chunks())
    digest = None
    if check is not None and check[0] == "sha256":
        digest = check[1]
    elif check is not None:
        try:
            recorded, digest = expected_from_manifest(check[1])
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"cannot check {path} against its manifest: {exc}\n")
            return FAILED
        size = recorded if size is None else size
    try:
        count, got = write_atomic(path, chunks, mode, size, digest)
    except Mismatch as exc:
        sys.stderr.write(f"{path} not written: {exc}\n")
        return MISMATCH
    except OSError as exc:
        sys.stderr.write(f"cannot write {path}: {exc.strerror or exc}\n")
        return FAILED
    procs.write_all(1, (json.dumps({"bytes": count, "sha256": got}) + "\n").encode("ascii"))
    procs.drain((1,))
    return 0

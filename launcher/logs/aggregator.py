"""Log aggregation: every line of every process to its own file, one prefixed live stream, activity.

Transports call a sink once per whole line, from their reader threads; the sink only queues the
line, and one writer thread writes whole lines in arrival order (so each rank keeps its order and
no line is split), buffered and flushed whenever the queue runs empty or `flush_interval` passes.
The file names and line format are `launcher.logs.format`'s. The aggregator also keeps, per process,
the last lines and the time of the last one (for failure reports and hang detection), and hands the
lines that carry an observer's mark to that observer (`launcher.logs.progress`: metrics records and
stragglers), on the writer thread; what an observer returns is added to job.log and the stream.
"""
from __future__ import annotations

import collections
import itertools
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Deque, Dict, Iterable, List, Optional, Protocol, Sequence, Union

from launcher.logs.format import (
    JOB_LOG,
    LAUNCHER_SOURCE,
    attempt_header,
    is_framework_log,
    line_prefix,
    rank_log_name,
    rank_source,
    source_rank,
)

#: Rank and process log files kept open at once (least recently written closed first), so the
#: launcher's file descriptors do not grow with the number of ranks.
MAX_OPEN_FILES = 64
Sink = Callable[[str], None]


class LineObserver(Protocol):
    """Sees the lines that contain its `mark`, on the aggregator's writer thread."""

    mark: str

    def observe(self, source: str, host: str, rank: Optional[int], attempt: int, line: str
                ) -> Optional[str]:
        """Handle one line; a launcher note to add to job.log and the stream, or None."""

    def flush(self) -> None:
        """Make what the observer wrote so far visible to readers (called when the aggregator flushes)."""

    def close(self) -> None:
        """The aggregator closes: flush and close whatever the observer writes."""


def _join_lines(lines: List[str]) -> Optional[str]:
    """The lines joined by newlines without the trailing one, when every line or none ends with a
    newline (one C-level join and count); None when they are mixed and need one by one handling."""
    if lines[-1].endswith("\n"):
        text = "".join(lines)
        return text[:-1] if text.count("\n") == len(lines) and "\r" not in text else None
    text = "\n".join(lines)
    return text if text.count("\n") == len(lines) - 1 else None


@dataclass(frozen=True)
class Activity:
    """What a process has printed so far: line count, last line and when (wall and monotonic)."""

    source: str
    host: str
    rank: Optional[int]
    lines: int
    last_line: Optional[str]
    last_time: Optional[float]
    last_monotonic: Optional[float]


class _Channel:
    """Per-process state of the aggregator; its file and counters are touched by the writer thread."""

    __slots__ = ("source", "host", "rank", "prefix", "nl_prefix", "path", "file", "tail", "lines",
                 "last_line", "last_mono", "attempt", "shown", "pending", "index", "lines_queue")

    def __init__(self, source: str, host: str, rank: Optional[int], path: Path, tail: int, shown: bool,
                 index: int):
        self.source, self.host, self.rank, self.path = source, host, rank, path
        self.prefix = self.nl_prefix = ""
        self.set_host(host)
        self.file: Optional[IO[bytes]] = None
        self.tail: Deque[str] = collections.deque(maxlen=tail)
        self.lines = 0
        self.last_line: Optional[str] = None
        self.last_mono: Optional[float] = None
        self.attempt = 0
        self.shown = shown
        self.pending: List[str] = []
        self.index = index
        self.lines_queue: Deque[str] = collections.deque()

    def set_host(self, host: str) -> None:
        self.host = host
        self.prefix = line_prefix(self.source, host)
        self.nl_prefix = "\n" + self.prefix


_CONTROL = -1


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "replace")


def _strip(line: Optional[str]) -> Optional[str]:
    return line.rstrip("\r\n") if line is not None and line.endswith("\n") else line


def _pop_many(queue: Deque, limit: int) -> list:
    """Up to `limit` items from the left of `queue` (only this thread pops, so they are there)."""
    return list(itertools.islice(iter(queue.popleft, None), min(limit, len(queue))))


class _Control:
    """An item in the line queue that is not a line: an attempt start, a launcher note, a flush barrier."""

    __slots__ = ("attempt", "done", "note")

    def __init__(self, attempt: Optional[int] = None, done: Optional[threading.Event] = None,
                 note: Optional[str] = None):
        self.attempt, self.done, self.note = attempt, done, note


class LogAggregator:
    """Receives whole lines per process from many threads; writes files, a live stream, activity.

    A sink only appends the line to its process's deque and the process's index to a shared
    order deque (atomic appends, no lock, no per-line objects for the garbage collector), so reader
    threads never wait on each other; one writer thread drains them in batches, in arrival order,
    and does all the formatting and I/O. When more than `max_pending` lines wait, sinks pause
    briefly: the ranks' pipes fill and the ranks slow down instead of lines being dropped.

    `stream` (e.g. sys.stdout) gets the prefixed live view, restricted to `ranks` when given
    (auxiliary processes are shown only without a rank filter), without MindSpore's INFO/DEBUG lines
    unless `show_framework_logs`. `observers` see the lines carrying their mark (see
    `LineObserver`). Use as a context manager or call `close()`; a line that still arrives after
    `close()` is appended to the files directly.
    """

    def __init__(self, logs_dir: Union[str, os.PathLike], *, stream: Optional[IO[str]] = None,
                 ranks: Optional[Iterable[int]] = None, tail_lines: int = 50, flush_interval: float = 0.2,
                 max_pending: int = 100_000, show_framework_logs: bool = False,
                 observers: Sequence[LineObserver] = ()):
        self.logs_dir = Path(logs_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._stream = stream
        self._ranks = None if ranks is None else frozenset(ranks)
        self._tail_lines = tail_lines
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._show_framework = show_framework_logs
        self._stream_differs = False
        self.observers = tuple(observers)
        self._lock = threading.Lock()
        self._channels: Dict[str, _Channel] = {}
        self._queue: Deque[int] = collections.deque()
        self._controls: Deque[_Control] = collections.deque()
        self._by_index: List[_Channel] = []
        self._open_channels: collections.OrderedDict[int, _Channel] = collections.OrderedDict()
        self._attempt = 0
        self._job_log_path = self.logs_dir / JOB_LOG
        self._job_log = self._open(self._job_log_path)
        self._idle = False
        self._attention = False
        self._wake = threading.Event()
        self._late_lock = threading.Lock()
        self._attempt_started: Optional[float] = None
        self._closing = False
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="log-writer", daemon=True)
        self._writer.start()

    @staticmethod
    def _open(path: Path) -> IO[bytes]:
        return open(path, "ab", buffering=1 << 16)

    def __enter__(self) -> LogAggregator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def attempt(self) -> int:
        return self._attempt

    def start_attempt(self, number: int) -> None:
        """Lines from now on belong to attempt `number`: a header goes to job.log, the stream and,
        before their next line, to each process's file."""
        self._put(_Control(attempt=number))

    def note(self, text: str) -> None:
        """A launcher message in job.log and the live stream (`[launcher] text`), in order with the lines."""
        self._put(_Control(note=text))

    def rank_sink(self, rank: int, host: str) -> Sink:
        """The `on_line` callback for rank `rank` running on `host`."""
        return self._sink(rank_source(rank), host, rank, self.logs_dir / rank_log_name(rank))

    def process_sink(self, name: str, host: str) -> Sink:
        """The `on_line` callback for an auxiliary process (`scheduler`, `msrun`, ...)."""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.@-]*", name) or source_rank(name) is not None:
            raise ValueError(f"process name {name!r} must be a word that does not look like a rank (r<N>)")
        return self._sink(name, host, None, self.logs_dir / f"{name}.log")

    def _sink(self, source: str, host: str, rank: Optional[int], path: Path) -> Sink:
        with self._lock:
            ch = self._channels.get(source)
            if ch is None:
                shown = self._ranks is None or (rank is not None and rank in self._ranks)
                ch = self._channels[source] = _Channel(source, host, rank, path, self._tail_lines, shown,
                                                       len(self._by_index))
                self._by_index.append(ch)
            elif ch.host != host:
                ch.set_host(host)
        append_line, append_index, index = ch.lines_queue.append, self._queue.append, ch.index

        def on_line(line: str) -> None:
            append_line(line)
            append_index(index)
            if self._attention:
                self._on_attention()

        return on_line

    def _put(self, item: _Control) -> None:
        if self._closed:
            raise ValueError("log aggregator is closed")
        self._controls.append(item)
        self._queue.append(_CONTROL)
        self._wake.set()

    def _on_attention(self) -> None:
        """The writer is idle (wake it), closed (write directly) or behind (wait for it)."""
        if self._closed:
            self._write_late()
        elif self._idle:
            self._wake.set()
        else:
            while len(self._queue) > self._max_pending // 2 and not self._closed:
                self._wake.set()
                time.sleep(0.001)

    def _write_loop(self) -> None:
        queue, last_flush = self._queue, time.monotonic()
        while True:
            if not queue:
                self._idle = self._attention = True
                if not queue:
                    self._flush_files()
                    last_flush = time.monotonic()
                    if self._closing:
                        break
                    self._wake.wait(self._flush_interval)
                    self._wake.clear()
                self._idle = False
                self._attention = len(queue) > self._max_pending
                continue
            batch = _pop_many(queue, 20_000)
            self._attention = len(queue) > self._max_pending
            self._write_batch(batch)
            if time.monotonic() - last_flush >= self._flush_interval:
                self._flush_files()
                last_flush = time.monotonic()

    def _write_batch(self, batch: List[int]) -> None:
        """Write a batch in arrival order; consecutive lines of one process are handled as a run."""
        job_parts: List[str] = []
        stream_parts: List[str] = []
        touched: List[_Channel] = []
        for index, items in itertools.groupby(batch):
            if index == _CONTROL:
                self._write_channels(touched, job_parts, stream_parts)
                job_parts, stream_parts, touched = [], [], []
                for _ in items:
                    self._apply_control(self._controls.popleft())
            else:
                ch = self._by_index[index]
                run = _pop_many(ch.lines_queue, len(list(items)))
                self._end_run(ch, run, job_parts, stream_parts, touched)
        self._write_channels(touched, job_parts, stream_parts)

    def _end_run(self, ch: _Channel, run: List[str], job_parts: List[str], stream_parts: List[str],
                 touched: List[_Channel]) -> None:
        text = _join_lines(run)
        if text is None:
            run = [line.rstrip("\r\n") for line in run]
            text = "\n".join(run)
        if not ch.pending:
            touched.append(ch)
        ch.pending.append(text)
        piece = ch.prefix + text.replace("\n", ch.nl_prefix)
        job_parts.append(piece)
        if ch.shown:
            if self._show_framework or ("[INFO] " not in text and "[DEBUG] " not in text):
                stream_parts.append(piece)
            else:
                kept = [line for line in text.split("\n") if not is_framework_log(line)]
                self._stream_differs = True
                if kept:
                    stream_parts.append(ch.prefix + ch.nl_prefix.join(kept))
        for observer in self.observers:
            if observer.mark in text:
                for line in run:
                    if observer.mark in line:
                        note = observer.observe(ch.source, ch.host, ch.rank, self._attempt, line)
                        if note is not None:
                            note = f"[{LAUNCHER_SOURCE}] {note}"
                            job_parts.append(note)
                            stream_parts.append(note)
        now = time.monotonic()
        with self._lock:
            ch.tail.extend(run[-self._tail_lines:])
            ch.lines += len(run)
            ch.last_line = run[-1]
            ch.last_mono = now

    def _write_channels(self, touched: List[_Channel], job_parts: List[str],
                        stream_parts: List[str]) -> None:
        if not job_parts:
            return
        header = attempt_header(self._attempt, self._attempt_started) + "\n" if self._attempt else ""
        for ch in touched:
            texts, ch.pending = ch.pending, []
            if ch.file is None or ch.file.closed:
                ch.file = self._open(ch.path)
                self._open_channels[ch.index] = ch
                while len(self._open_channels) > MAX_OPEN_FILES:
                    _, oldest = self._open_channels.popitem(last=False)
                    oldest.file.close()
            else:
                self._open_channels.move_to_end(ch.index)
            if ch.attempt != self._attempt:
                ch.file.write(_encode(header))
                ch.attempt = self._attempt
            ch.file.write(_encode("\n".join(texts) + "\n"))
        job_text = "\n".join(job_parts) + "\n"
        self._job_log.write(_encode(job_text))
        same = len(stream_parts) == len(job_parts) and not self._stream_differs
        self._stream_differs = False
        if stream_parts:
            self._write_stream(job_text if same else "\n".join(stream_parts) + "\n")

    def _apply_control(self, item: _Control) -> None:
        if item.attempt is not None:
            self._attempt, self._attempt_started = item.attempt, time.time()
            header = attempt_header(item.attempt, self._attempt_started) + "\n"
            self._job_log.write(_encode(header))
            self._write_stream(header)
        if item.note is not None:
            text = "".join(f"[{LAUNCHER_SOURCE}] {line}\n" for line in item.note.splitlines())
            self._job_log.write(_encode(text))
            self._write_stream(text)
        if item.done is not None:
            self._flush_files()
            item.done.set()

    def _write_stream(self, text: str) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(text)
        except (OSError, ValueError):
            self._stream = None

    def _flush_files(self) -> None:
        for f in [self._job_log, *(ch.file for ch in list(self._channels.values()))]:
            if f is not None and not f.closed:
                f.flush()
        for observer in self.observers:
            observer.flush()
        if self._stream is not None:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._stream = None

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every line handed over so far is written and flushed; False on timeout."""
        if self._closed:
            return True
        done = threading.Event()
        self._put(_Control(done=done))
        return done.wait(timeout)

    def activity(self) -> Dict[str, Activity]:
        """Per source (`r0`, `scheduler`): lines written so far, the last one and when it came."""
        now_wall, now_mono = time.time(), time.monotonic()
        with self._lock:
            return {src: Activity(src, ch.host, ch.rank, ch.lines, _strip(ch.last_line),
                                  None if ch.last_mono is None else now_wall - (now_mono - ch.last_mono),
                                  ch.last_mono)
                    for src, ch in self._channels.items()}

    def last_activity(self) -> Dict[int, Optional[float]]:
        """Rank -> `time.monotonic()` of its last line (None if it printed nothing yet)."""
        with self._lock:
            return {ch.rank: ch.last_mono for ch in self._channels.values() if ch.rank is not None}

    def tail(self, rank: int, n: Optional[int] = None) -> List[str]:
        """The last `n` (default: all kept) lines of rank `rank`, oldest first; call `flush()` first
        to be sure lines handed over just before are included."""
        return self.tail_of(rank_source(rank), n)

    def tail_of(self, source: str, n: Optional[int] = None) -> List[str]:
        with self._lock:
            ch = self._channels.get(source)
            lines = [_strip(line) for line in ch.tail] if ch else []
        return lines if n is None else lines[-n:] if n > 0 else []

    def close(self) -> None:
        """Write everything handed over, flush and close the files (the stream stays open)."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        self._writer.join()
        self._closed = True
        self._idle = self._attention = True
        self._write_late()
        with self._late_lock:
            self._close_files()

    def _write_late(self) -> None:
        """Lines that arrive after `close()`: appended to the files directly, then closed again."""
        with self._late_lock:
            batch = _pop_many(self._queue, len(self._queue))
            if not batch:
                return
            if self._job_log.closed:
                self._job_log = self._open(self._job_log_path)
            self._write_batch(batch)
            self._close_files()

    def _close_files(self) -> None:
        self._flush_files()
        for f in [self._job_log, *(ch.file for ch in self._channels.values())]:
            if f is not None:
                f.close()
        for observer in self.observers:
            try:
                observer.close()
            except Exception:  # a failing observer must not stop the close
                pass



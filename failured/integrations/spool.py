"""A local spool directory: the worker's reports on their way to failured, one file each.

A failing task must pay only for a hand-off that survives its process being killed
(``kill -9``) — not for a trip to failured, and not for waiting its turn for
Python's GIL after a system call, which in a busy threads pool costs milliseconds.
So the sender thread makes *slots* ahead: files of ``SLOT_BYTES`` mapped into memory
(``mmap``, shared with the page cache). ``put`` copies the report into a slot and
then writes its header (length, time): no system call, and the report belongs to
the kernel at once, so a killed process loses nothing it handed off. A report too
big for a slot, or one made when no slot is ready, is written the classic way: a
temporary file renamed into place. Either way a reader sees a whole report or none.

Power loss is another matter: ``fsync`` is what makes a file outlive it, and it
costs milliseconds, so ``put`` does it only when asked (``durable``, which skips
slots), and ``sync`` does it for many files at once, off the worker's path.

``pending`` lists the reports oldest first (by the time in a slot's header or a
file's name). Several processes (a prefork pool) may share one directory: each
report is sent under an exclusive ``flock``, so no two send the same one.
"""

import collections
import fcntl
import itertools
import json
import mmap
import os
import threading
import time
from pathlib import Path

from .protocol import json_bytes

SUFFIX = ".json"
SLOT_SUFFIX = ".slot"
SLOT_BYTES = 16 * 1024  # most reports (8 frames of traceback and the arguments) fit
HEADER = 16  # a slot starts with the report's length and time (8 bytes each, little-endian); length 0: unused
SLOTS = 32  # slots kept ready per process (512 KiB)
SENT, REJECTED = "sent", "rejected"
STALE_TEMP_SECONDS = 600  # a temporary file or empty slot this old, of a process that is gone, is left over
_counter = itertools.count()
_clock_lock = threading.Lock()
_last_ns = 0  # the newest name's time in this process; guarded by _clock_lock


def _name():
    """Unique across processes and threads, and increasing within a process even if the clock steps back."""
    global _last_ns
    with _clock_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return f"{_last_ns:020d}-{os.getpid()}-{next(_counter):06d}"


def _scan_time():
    """A time that every report named from now on, in this process, is newer than."""
    with _clock_lock:
        return max(time.time_ns(), _last_ns + 1)


class Spool:
    """One spool directory (created on first use); ``durable``: fsync every ``put``."""

    def __init__(self, directory, durable=False):
        self.dir = Path(directory)
        self.durable = durable
        self._made = False
        # Slots made ahead by the sender thread and taken by put, and the used ones, which the
        # sender unmaps. Deques: their appends and pops are atomic, no lock needed.
        self._slots = collections.deque()  # (mmap, path)
        self._spent = collections.deque()  # mmap
        os.register_at_fork(after_in_child=self._forget_slots)

    def _ensure_dir(self):
        if not self._made:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._made = True

    def put(self, record):
        """Hand one record over for good (fsynced too when the spool is ``durable``); returns its path."""
        data = json_bytes(record)
        name = _name()
        if not self.durable and len(data) <= SLOT_BYTES - HEADER:
            try:
                slot, path = self._slots.popleft()
            except IndexError:
                slot = None
            if slot is not None:
                slot[HEADER:HEADER + len(data)] = data
                slot[8:16] = int(name[:20]).to_bytes(8, "little")
                slot[0:8] = len(data).to_bytes(8, "little")  # last: until now a reader skips the slot
                self._spent.append(slot)
                return path
        self._ensure_dir()
        final = self.dir / (name + SUFFIX)
        temp = self.dir / f".{name}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)
        if self.durable:
            self._sync_dir()
        return final

    def prepare(self, count=SLOTS):
        """Make slots until ``count`` are ready for ``put``; unmap the used ones (the sender calls this)."""
        while self._spent:
            self._spent.popleft().close()
        if self.durable or len(self._slots) >= count:
            return
        self._ensure_dir()
        zeros = bytes(SLOT_BYTES)
        while len(self._slots) < count:
            path = self.dir / (_name() + SLOT_SUFFIX)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if os.write(fd, zeros) < SLOT_BYTES:  # real pages, not a sparse file: put's copy must not allocate
                    raise OSError(f"{path}: short write (disk full?)")
                slot = mmap.mmap(fd, SLOT_BYTES)
            except BaseException:
                os.unlink(path)
                raise
            finally:
                os.close(fd)
            self._slots.append((slot, path))

    def discard_slots(self):
        """Remove the slots made and not used (at shutdown)."""
        while self._spent:
            self._spent.popleft().close()
        while True:
            try:
                slot, path = self._slots.popleft()
            except IndexError:
                return
            slot.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _forget_slots(self):
        # A forked child must not take its parent's slots (both would write the same file).
        for slot in [slot for slot, _ in self._slots] + list(self._spent):
            slot.close()
        self._slots, self._spent = collections.deque(), collections.deque()

    @staticmethod
    def read(path):
        """The record in a spool file or slot; None for an unused slot. Raises ValueError when damaged."""
        with open(path, "rb") as f:
            return _parse(path, f.read())

    def sync(self, paths):
        """fsync ``paths`` (those still there) and then the directory once; returns how many were synced."""
        synced = 0
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # delivered meanwhile
                continue
            try:
                os.fsync(fd)
                synced += 1
            finally:
                os.close(fd)
        if synced:
            self._sync_dir()  # the renames are durable only once the directory entries are
        return synced

    def _sync_dir(self):
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def salvage(self, older_than=STALE_TEMP_SECONDS, now=None):
        """Temporary files a dead writer left (older than ``older_than`` s): a whole report is published,
        a torn or empty one removed. Returns (published, removed)."""
        now = time.time() if now is None else now
        published = removed = 0
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return 0, 0
        for entry in entries:
            if entry.name.endswith(SLOT_SUFFIX) and not entry.name.startswith("."):
                removed += self._remove_left_slot(entry, now, older_than)
                continue
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                continue
            try:
                if now - entry.stat().st_mtime < older_than or _writer_alive(entry.name):
                    continue  # may still be being written
                with open(entry.path, "rb") as f:
                    json.loads(f.read().decode("utf-8"))
                os.rename(entry.path, self.dir / (entry.name[1:-len(".tmp")] + SUFFIX))
                published += 1
            except ValueError:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:  # another process got to it first
                pass
        return published, removed

    def _remove_left_slot(self, entry, now, older_than):
        try:
            if now - entry.stat().st_mtime < older_than or _slot_header(entry.path)[0] or _writer_alive(entry.name):
                return 0  # holds a report (the drain sends it), or its process may still use it
            os.unlink(entry.path)
            return 1
        except FileNotFoundError:
            return 0

    def pending(self):
        """Paths of the waiting reports (files, and slots in use), oldest first.

        Only reports named before the scan began: a directory scan is not a snapshot, so a
        report published during it (renamed into place) may be missed while a newer one of
        the same thread, written into a slot listed earlier, is seen; taken alone, the newer
        one would be sent first. The next scan takes both, in order.
        """
        cutoff = _scan_time()
        try:
            entries = [e for e in os.scandir(self.dir) if not e.name.startswith(".")
                       and (e.name.endswith(SUFFIX) or e.name.endswith(SLOT_SUFFIX))]
        except FileNotFoundError:
            return []
        keyed = []
        for entry in entries:
            if entry.name.endswith(SUFFIX):
                at = _name_time(entry.name)
            else:
                length, at = _slot_header(entry.path)
                if not length:
                    continue
            if at < cutoff:
                keyed.append((at, entry.name))
        return [self.dir / name for _, name in sorted(keyed)]

    def is_empty(self):
        return not self.pending()

    def adopt(self, other):
        """Move the waiting reports of spool directory ``other`` here: its files, and the slots holding a report
        whose writer is gone (a living writer's slots stay: it may write them yet). Returns how many."""
        moved = 0
        for path in Spool(other).pending():
            if path.name.endswith(SLOT_SUFFIX) and _writer_alive(path.name):
                continue
            self._ensure_dir()
            try:
                os.rename(path, self.dir / path.name)
                moved += 1
            except FileNotFoundError:  # its sender got to it first
                pass
        return moved

    def drain(self, deliver, batch=1, stop=None):
        """Send records oldest first, ``batch`` at a time; stop at the first batch that fails or when ``stop()``.

        ``deliver(records)`` returns ``(outcomes, error)``: one ``SENT`` or ``REJECTED``
        for each record taken, in order (a prefix of them when ``error`` is not None).
        A sent record's file is removed, a rejected one is kept as ``*.rejected``.
        A record that is not valid JSON is set aside as ``*.bad`` (never retried forever).
        Returns (records sent, error or None).
        """
        sent = 0
        paths = self.pending()
        at = 0
        while at < len(paths) and not (stop is not None and stop()):
            held = []  # (path, fd, record): locked until delivered
            try:
                while at < len(paths) and len(held) < batch:
                    taken = self._take(paths[at])
                    at += 1
                    if taken is not None:
                        held.append(taken)
                if not held:
                    continue
                outcomes, error = deliver([record for _, _, record in held])
                # Removed while still locked: a process that opened the file meanwhile sees it gone.
                for (path, _, _), outcome in zip(held, outcomes):
                    if outcome == REJECTED:
                        os.rename(path, path.with_suffix(".rejected"))
                    else:
                        os.unlink(path)
                        sent += 1
                if error is not None:
                    return sent, error
            finally:
                for _, fd, _ in held:
                    os.close(fd)
        return sent, None

    def _take(self, path):
        """(path, locked fd, record), or None when another process has it or it was sent already."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # another process sent it just now
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _still_there(path, fd):  # sent (or set aside) while we opened it
                os.close(fd)
                return None
            try:
                record = _parse(path, _read_all(fd))
            except ValueError:
                os.rename(path, path.with_suffix(".bad"))
                os.close(fd)
                return None
            if record is None:  # an unused slot
                os.close(fd)
                return None
            return path, fd, record
        except BlockingIOError:  # another process is sending it
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise


def _parse(path, data):
    """The record in the bytes of a spool file or slot (None: an unused slot); ValueError when damaged."""
    if str(path).endswith(SLOT_SUFFIX):
        length = int.from_bytes(data[:8], "little")
        if not length:
            return None
        if length > len(data) - HEADER:
            raise ValueError(f"slot length {length} past its end")
        data = data[HEADER:HEADER + length]
    return json.loads(data.decode("utf-8"))


def _slot_header(path):
    """(length, time) from a slot's header; (0, 0) for an unused or vanished one."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0, 0
    try:
        header = os.pread(fd, HEADER, 0)
    finally:
        os.close(fd)
    if len(header) < HEADER:
        return 0, 0
    return int.from_bytes(header[:8], "little"), int.from_bytes(header[8:16], "little")


def _name_time(name):
    try:
        return int(name[:20])
    except ValueError:  # not one of ours: first, so that it is looked at (and set aside if bad)
        return 0


def _writer_alive(file_name):
    """Whether the process named in a spool file's name ("TIME-PID-N...") still runs."""
    try:
        pid = int(file_name.lstrip(".").split("-")[1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _still_there(path, fd):
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_all(fd):
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)

"""A local spool directory: reports that could not be delivered yet, one JSON file each.

A file is written atomically (temporary file, fsync, rename, fsync of the directory),
so a crash leaves either the whole report or nothing. Names sort by creation time,
so draining goes oldest first. Several processes (a prefork pool) may share one
directory: each file is sent under an exclusive ``flock``, so no two send the same one.
"""

import fcntl
import itertools
import json
import os
import time
from pathlib import Path

SUFFIX = ".json"
_counter = itertools.count()


class Spool:
    """One spool directory (created on first use)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self._made = False

    def _ensure_dir(self):
        if not self._made:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._made = True

    def put(self, record):
        """Write one record durably; returns its path."""
        self._ensure_dir()
        # time first (oldest first), then pid and a counter: unique across processes and threads.
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(_counter):06d}"
        final = self.dir / (name + SUFFIX)
        temp = self.dir / (f".{name}.tmp")
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)
        self._sync_dir()
        return final

    def _sync_dir(self):
        # The rename is durable only once the directory entry is on disk.
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self):
        """Paths of the spooled records, oldest first."""
        try:
            names = [e.name for e in os.scandir(self.dir) if e.name.endswith(SUFFIX) and not e.name.startswith(".")]
        except FileNotFoundError:
            return []
        return [self.dir / name for name in sorted(names)]

    def is_empty(self):
        return not self.pending()

    def drain(self, deliver, deadline=None):
        """Send records oldest first with ``deliver(record)``; stop at the first that fails.

        ``deliver`` raises to say "not delivered". Returns (sent, error or None).
        A record that is not valid JSON is set aside as ``*.bad`` (never retried forever).
        """
        sent = 0
        for path in self.pending():
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:  # another process sent it just now
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another process is sending it
                    continue
                if os.fstat(fd).st_nlink == 0:  # sent and removed while we waited for the lock
                    continue
                try:
                    record = json.loads(_read_all(fd))
                except ValueError:
                    os.rename(path, path.with_suffix(".bad"))
                    continue
                try:
                    deliver(record)
                except Exception as exc:
                    return sent, exc
                # Unlinked while still locked: a waiting process then sees st_nlink == 0.
                os.unlink(path)
                sent += 1
            finally:
                os.close(fd)
        return sent, None


def _read_all(fd):
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8")

"""Hot reload: watch the config directory, debounce, validate it whole, swap or keep the last good.

Editors save by writing a temp file and renaming it; watching the directory
(not the files) and reloading after a quiet moment sees every way a file can
change. A tool that writes in place (``cp``, a shell's ``>``) empties the file
first: a file found empty that was not when the active snapshot was read is a
save still being written, and waits for its content (an empty ``failured.toml``
is valid TOML, and would have meant every default: no handlers, every retry
parked as manual).
"""

import dataclasses
import logging
import os
import stat
import threading
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from . import lastgood
from .alertlog import append_line
from .clock import SystemClock, iso
from .config import MAIN_FILE, config_files, content_digest, load_config
from .errors import ConfigError, ConfigErrors
from .store import StoreUnavailableError

log = logging.getLogger("failured.config")

DEBOUNCE_SECONDS = 0.3
# How often the watcher checks that the directory it watches is still the one at the configured path:
# a deploy that replaces the whole directory (or turns a symlink to a new release) leaves the old
# watch on a directory no one edits any more.
IDENTITY_CHECK_SECONDS = 1.0
STORE_RETRY_SECONDS = 5.0  # a reload that could not read the labels (the database dropped us) is tried again


class _Poke(FileSystemEventHandler):
    def __init__(self, changed):
        self._changed = changed

    def on_any_event(self, event):
        if event.event_type not in ("opened", "closed_no_write"):
            self._changed.set()


class ConfigWatcher:
    """Keeps ``current`` (the active Snapshot) in step with the directory.

    ``on_reload(snapshot)`` runs after a good change is swapped in;
    ``on_reject(errors)`` after a bad one was refused (the old snapshot stays);
    ``on_restore(snapshot)`` when a refused change was undone (the files are the active snapshot's again);
    ``on_wait(paths)`` when the files a reload waits for (found emptied: a save still being written) change, ``()``
    when it waits no more.
    With ``keep_last_good`` (the daemon), every good snapshot is kept as the last good copy, and a directory
    that does not validate at start is run on that copy (``started_on_last_good`` says when it was saved).
    """

    def __init__(self, config_dir, lang="zh", on_reload=None, on_reject=None, clock=None,
                 debounce=DEBOUNCE_SECONDS, log_dir=None, labels=lambda: (), on_restore=None, keep_last_good=False,
                 on_wait=None):
        self.config_dir = config_dir
        self.labels = labels  # operators' labelled examples, read at each load: the model trains on them
        self.log_dir = log_dir
        self.lang = lang
        self.on_reload = on_reload or (lambda snapshot: None)
        # Standalone, the watcher writes the rejection to admin_alerts.log itself; the daemon's
        # callback queues it in the outbox instead, whose log channel writes it (once).
        self.on_reject = on_reject or self._alert
        self.on_restore = on_restore or (lambda snapshot: None)
        self.on_wait = on_wait or (lambda paths: None)
        self.waiting_on = ()  # emptied files a reload waits to have content again
        self.clock = clock or SystemClock()
        self.debounce = debounce
        self.keep_last_good = keep_last_good
        self.last_rejected = None  # (time, [ConfigError]) of the newest refused reload
        self.started_on_last_good = None  # when the copy a start ran on was saved
        self._found_at_start = content_digest(config_files(config_dir))  # before the first load reads it
        self.current = self._first_load()
        self._empty_when_loaded = _empty_files(self.current.files)
        self.loaded_at = self.clock.now()
        self._changed = threading.Event()
        self._retrain = threading.Event()  # new labels: reload even though no file changed
        self._stopping = threading.Event()
        self._observer = None
        self._watched = None  # the identity of the directory the observer watches
        self._linked_digest = None  # the last digest a look found behind links (see _rewatch_if_replaced)
        self._thread = None

    def start(self):
        self._watch()
        # An edit between the first load and now (a first start trains the model meanwhile) made no event.
        if content_digest(config_files(self.config_dir)) != self._found_at_start:
            self._changed.set()
        self._thread = threading.Thread(target=self._loop, name="config-watcher", daemon=True)
        self._thread.start()
        return self

    def _identity(self):
        """(device, inode) of the directory at the configured path now, or None while there is none."""
        try:
            info = os.stat(self.config_dir)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def _watch(self):
        """Watch the directory now at the configured path (a new observer: inotify follows the old inode)."""
        self._stop_observer()
        self._watched = self._identity()
        if self._watched is None:
            return
        observer = Observer()
        try:
            observer.schedule(_Poke(self._changed), str(self.config_dir), recursive=True)
            observer.daemon = True
            observer.start()
        except OSError as exc:  # replaced again, or gone, between the stat and the watch: the next check retries
            log.warning("config %s: cannot watch it (%s); checking again in %.0f s", self.config_dir, exc,
                        IDENTITY_CHECK_SECONDS)
            self._watched = None
            return
        self._observer = observer

    def _stop_observer(self):
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None

    def _rewatch_if_replaced(self):
        """A directory replaced at the configured path is watched from now on, and read at once. Where a config
        file or its directory is a link (a file kept in git elsewhere, a mounted ConfigMap), an edit of its target
        makes no event here: such a directory is compared with the active snapshot at each look instead."""
        if self._identity() == self._watched:
            if _has_links(self.config_dir):
                digest = content_digest(config_files(self.config_dir))
                if digest not in (self.current.digest, self._linked_digest):  # a refused edit is not read again
                    self._linked_digest = digest
                    self._changed.set()
            return
        log.warning("config %s was replaced (a new directory at that path): watching the new one", self.config_dir)
        self._watch()
        self._changed.set()

    def stop(self):
        self._stopping.set()
        self._changed.set()
        self._stop_observer()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def alive(self):
        return self._thread is not None and self._thread.is_alive()

    def request_reload(self):
        """Reload soon, as on SIGHUP (safe to call from a signal handler)."""
        self._changed.set()

    def retrain(self):
        """Rebuild the snapshot soon even if no file changed: the labels did (the model learns them)."""
        self._retrain.set()
        self._changed.set()

    def _load(self, config_dir=None):
        return load_config(config_dir or self.config_dir, self.lang, self.log_dir or "logs", labels=self.labels())

    def _first_load(self):
        """The directory's snapshot; when it does not validate, or lost the failured.toml its last good copy
        has, the last good copy's (or the errors, raised)."""
        try:
            if self.keep_last_good and lastgood.holds(self.config_dir, MAIN_FILE):
                self._refuse_lost_main_file()
            snapshot = self._load()
        except ConfigErrors as exc:
            if not self.keep_last_good:
                raise
            return self._load_last_good(exc)
        self._keep(snapshot)
        return snapshot

    def _retry_later(self, force):
        def again():
            if force:
                self._retrain.set()
            self._changed.set()

        timer = threading.Timer(STORE_RETRY_SECONDS, again)
        timer.daemon = True
        timer.start()

    def _refuse_lost_main_file(self):
        """ConfigErrors when failured.toml, which the active (or last good) configuration had, is gone or a link
        to nothing: every default would drop the task types' handlers and the channels without a word."""
        main = Path(self.config_dir, MAIN_FILE)
        if main.exists():
            return
        what = f"a link to {os.readlink(main)}, which does not exist" if main.is_symlink() else "missing"
        raise ConfigErrors([ConfigError(main, None, f"{what}: it holds the task types' handlers, the channels and the "
                                                    "routes the daemon runs on; restore it (an empty file means "
                                                    "every default)")])

    def _load_last_good(self, refused):
        with lastgood.restored(self.config_dir) as found:
            if found is None:
                raise refused
            copy_dir, saved_at = found
            try:
                snapshot = self._load(copy_dir)
            except ConfigErrors:  # a copy this version no longer takes (an upgrade): the directory's errors count
                raise refused from None
        # Named as the directory's files: the digest stays the copy's, so any edit is read as a change.
        snapshot = dataclasses.replace(snapshot, files=tuple(
            str(Path(self.config_dir, Path(path).relative_to(copy_dir))) for path in snapshot.files))
        log.error("config %s does not validate: %d problem(s)\n%s\nrunning on the last good configuration, kept "
                  "when it was loaded at %s; the next good edit replaces it", self.config_dir, len(refused.errors),
                  refused, iso(saved_at))
        self.started_on_last_good = saved_at
        self.last_rejected = (self.clock.now(), refused.errors)
        return snapshot

    def _keep(self, snapshot):
        if self.keep_last_good:
            lastgood.save(snapshot, self.config_dir, self.clock.now())

    def _loop(self):
        while not self._stopping.is_set():
            try:
                self._look()
            except Exception:  # never let a bug take hot reload down for good
                log.exception("config %s: watcher error; going on", self.config_dir)
                self._stopping.wait(IDENTITY_CHECK_SECONDS)

    def _look(self):
        """Wait for a change (or the next identity check), then reload when the directory is quiet."""
        if not self._changed.wait(IDENTITY_CHECK_SECONDS):
            self._rewatch_if_replaced()
            return
        # Debounce: wait until the directory has been quiet for a moment.
        while self._changed.is_set() and not self._stopping.is_set():
            self._changed.clear()
            self._stopping.wait(self.debounce)
        if not self._stopping.is_set():
            force = self._retrain.is_set()
            self._retrain.clear()
            self.reload(force=force, why="the model learns the operators' labels" if force else None)

    def reload(self, force=False, why=None):
        """Validate the directory and swap it in; returns True when a new snapshot is active. ``why``: the reason
        of a forced reload, for the log."""
        files = config_files(self.config_dir)
        if not force and content_digest(files) == self.current.digest:
            self._wait_for(())
            if self.last_rejected is not None:  # the refused change was undone: nothing is wrong any more
                self.last_rejected = None
                log.info("config %s: back to the active configuration; the refused change is gone", self.config_dir)
                self._call(self.on_restore, self.current)
            return False
        try:
            if str(Path(self.config_dir, MAIN_FILE)) in self.current.files:
                self._refuse_lost_main_file()
        except ConfigErrors as exc:
            log.error("config %s rejected, keeping the last good one:\n%s", self.config_dir, exc)
            self._reject(exc.errors)
            return False
        being_written = sorted(path for path in _empty_files(files) if path not in self._empty_when_loaded)
        if being_written and self.last_rejected is not None and all(
                str(error.path) in being_written for error in self.last_rejected[1]):
            self.last_rejected = None  # the refused text is gone from every file it was in: no problem any more
            self._call(self.on_restore, self.current)
        self._wait_for(being_written)
        if being_written:
            log.warning("config %s: empty, a save still being written? %s; the active configuration stays until it "
                        "has content (to drop a file, delete it)", self.config_dir, ", ".join(being_written))
            return False
        try:
            snapshot = self._load()
        except ConfigErrors as exc:
            log.error("config %s rejected, keeping the last good one: %d problem(s)\n%s",
                      self.config_dir, len(exc.errors), exc)
            self._reject(exc.errors)
            return False
        except StoreUnavailableError as exc:  # the labels could not be read: a dropped session is no bad config
            log.warning("config %s: reload waits for the database (%s); trying again in %gs", self.config_dir, exc,
                        STORE_RETRY_SECONDS)
            self._retry_later(force)
            return False
        except Exception as exc:  # never let a reload bug take the watcher down; the admins hear of it all the same
            log.exception("config %s: reload failed, keeping the last good one", self.config_dir)
            self._reject([ConfigError(self.config_dir, None, f"reload failed ({type(exc).__name__}: {exc}); "
                                                             "the daemon's log has the details")])
            return False
        self.current = snapshot
        self._empty_when_loaded = _empty_files(snapshot.files)
        self.loaded_at = self.clock.now()
        self.started_on_last_good = None
        self._keep(snapshot)
        log.info("config %s reloaded%s: %d categories, %d files", self.config_dir, f" ({why})" if why else "",
                 len(snapshot.ruleset.categories), len(snapshot.files))
        self._call(self.on_reload, snapshot)
        return True

    def _wait_for(self, paths):
        if tuple(paths) != self.waiting_on:
            self.waiting_on = tuple(paths)
            self._call(self.on_wait, self.waiting_on)

    def _reject(self, errors):
        self.last_rejected = (self.clock.now(), errors)
        self._call(self.on_reject, errors)

    def _alert(self, errors):
        if self.log_dir is None:
            return
        problems = [{"file": e.path, "key": e.key, "reason": e.reason} for e in errors]
        append_line(self.log_dir, "admin", {
            "kind": "config_rejected", "config_dir": str(self.config_dir),
            "message": f"config reload rejected ({len(errors)} problem(s)); the last good config stays active",
            "errors": problems,
        }, self.clock.now())

    def _call(self, callback, argument):
        try:
            callback(argument)
        except Exception:
            log.exception("config reload callback failed")


def _has_links(config_dir):
    """Whether a config file, or patterns/ or codes/, is a symbolic link."""
    paths = [Path(config_dir, "patterns"), Path(config_dir, "codes"), *config_files(config_dir)]
    return any(path.is_symlink() for path in paths)


def _empty_files(paths):
    """The paths (as strings) among ``paths`` that are regular files, there and empty (a FIFO's size is 0 too: the
    load refuses it, saying why)."""
    empty = set()
    for path in paths:
        try:
            status = os.stat(path)
            if stat.S_ISREG(status.st_mode) and status.st_size == 0:
                empty.add(str(path))
        except OSError:  # gone meanwhile: not empty, absent
            pass
    return empty

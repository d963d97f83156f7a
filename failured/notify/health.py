"""Each channel's delivery health in daemon_state, for ``failured status``.

Key ``channel:<name>``, value JSON ``{"ok": bool, "error": str | None, "at": iso UTC}``, plus ``"paused": true``
while the channel rejected our messages and waits for its config to change: the channel's last delivery
outcome. A channel is unhealthy while it is not ok. Written when the outcome changes, never once per message.
"""

import json
import logging

from ..clock import iso
from ..errors import StoreError

log = logging.getLogger("failured.notify")

KEY_PREFIX = "channel:"
REWRITE_SECONDS = 60.0  # a failing channel whose error text changes is rewritten at most this often
# A value read from the environment (${NAME}) changes only with a restart, which also lifts the pause.
PAUSED = "paused until its config changes or the daemon restarts (for a ${NAME} from the environment)"
DEFAULT_ADVICE = "fix the channel's settings in the config"


def state_key(name):
    return f"{KEY_PREFIX}{name}"


def parse_health(value):
    """The stored JSON as a dict, or None when absent or unreadable."""
    try:
        health = json.loads(value) if value else None
    except ValueError:
        return None
    return health if isinstance(health, dict) else None


def paused_words(error, advice=None):
    """What ``status`` says of a paused channel: that it is paused, what to do, and the rejection itself."""
    return f"{PAUSED}: {advice or DEFAULT_ADVICE} ({error})"


class ChannelHealth:
    """The remembered outcome of one channel; owned by that channel's lane thread."""

    def __init__(self, store, name):
        self.store, self.name = store, name
        self.ok, self.error, self.paused = None, None, False  # what the database holds (ok None: unknown)
        self.written_at = None  # monotonic time of the last write

    def load(self):
        """Start from what an earlier run stored, so an unchanged outcome is not rewritten."""
        try:
            stored = parse_health(self.store.get_state(state_key(self.name)))
        except Exception:  # an unreadable state row must not stop the lane from starting
            stored = None
        if stored is not None:
            self.ok, self.error = bool(stored.get("ok")), stored.get("error")
            self.paused = bool(stored.get("paused"))

    def record(self, ok, error, now, mono):
        """Note one delivery outcome; writes only when it differs from the stored one. The first outcome after a
        pause always replaces it: the config changed, and whatever happens now is the news."""
        error = None if ok else (error or "send failed")
        if not self.paused:
            if ok == self.ok and (ok or error == self.error):
                return
            if self.ok is False and not ok and self.written_at is not None and mono - self.written_at < REWRITE_SECONDS:
                return  # still failing, only the wording changed (robots put request ids in their errors)
        self._write(ok, error, False, now, mono)

    def pause(self, error, advice, now, mono):
        """The channel rejected our messages and sends nothing until its config changes: said at once, whatever
        it failed with before (a pause is not a change of wording)."""
        words = paused_words(error, advice)
        if self.paused and words == self.error:
            return
        self._write(False, words, True, now, mono)

    def _write(self, ok, error, paused, now, mono):
        value = {"ok": ok, "error": error, "at": iso(now), **({"paused": True} if paused else {})}
        try:
            self.store.set_state(state_key(self.name), json.dumps(value, ensure_ascii=False), now)
        except StoreError as exc:  # a full disk: keep the old belief, try again with the next outcome
            log.debug("channel %s: health not recorded: %s", self.name, exc)
            return
        if ok and self.ok is False:  # "again" only after a recorded failure, not at every start
            log.info("channel %s: delivering again", self.name)
        elif not ok and self.ok is not False:
            log.warning("channel %s: cannot deliver: %s", self.name, error)
        self.ok, self.error, self.paused, self.written_at = ok, error, paused, mono

    def forget(self):
        """The channel is no longer configured: drop its key so it does not count against ``status``."""
        if self.ok is None:
            return
        try:
            self.store.delete_state(state_key(self.name))
        except StoreError:
            return
        self.ok = self.error = None
        self.paused = False

"""Each channel's delivery health in daemon_state, for ``failured status``.

Key ``channel:<name>``, value JSON ``{"ok": bool, "error": str | None, "at": iso UTC}``:
the channel's last delivery outcome. A channel is unhealthy while it is not ok.
Written when the outcome changes, never once per message.
"""

import json
import logging

from ..clock import iso
from ..errors import StoreError

log = logging.getLogger("failured.notify")

KEY_PREFIX = "channel:"
REWRITE_SECONDS = 60.0  # a failing channel whose error text changes is rewritten at most this often


def state_key(name):
    return f"{KEY_PREFIX}{name}"


def parse_health(value):
    """The stored JSON as a dict, or None when absent or unreadable."""
    try:
        health = json.loads(value) if value else None
    except ValueError:
        return None
    return health if isinstance(health, dict) else None


class ChannelHealth:
    """The remembered outcome of one channel; owned by that channel's lane thread."""

    def __init__(self, store, name):
        self.store, self.name = store, name
        self.ok, self.error = None, None  # what the database holds (None: unknown)
        self.written_at = None  # monotonic time of the last write

    def load(self):
        """Start from what an earlier run stored, so an unchanged outcome is not rewritten."""
        try:
            stored = parse_health(self.store.get_state(state_key(self.name)))
        except Exception:  # an unreadable state row must not stop the lane from starting
            stored = None
        if stored is not None:
            self.ok, self.error = bool(stored.get("ok")), stored.get("error")

    def record(self, ok, error, now, mono):
        """Note one delivery outcome; writes only when it differs from the stored one."""
        error = None if ok else (error or "send failed")
        if ok == self.ok and (ok or error == self.error):
            return
        if self.ok is False and not ok and self.written_at is not None and mono - self.written_at < REWRITE_SECONDS:
            return  # still failing, only the wording changed (robots put request ids in their errors)
        value = json.dumps({"ok": ok, "error": error, "at": iso(now)}, ensure_ascii=False)
        try:
            self.store.set_state(state_key(self.name), value, now)
        except StoreError as exc:  # a full disk: keep the old belief, try again with the next outcome
            log.debug("channel %s: health not recorded: %s", self.name, exc)
            return
        if ok != self.ok:
            log.log(logging.INFO if ok else logging.WARNING, "channel %s: %s", self.name,
                    "delivering again" if ok else f"cannot deliver: {error}")
        self.ok, self.error, self.written_at = ok, error, mono

    def forget(self):
        """The channel is no longer configured: drop its key so it does not count against ``status``."""
        if self.ok is None:
            return
        try:
            self.store.delete_state(state_key(self.name))
        except StoreError:
            return
        self.ok = self.error = None

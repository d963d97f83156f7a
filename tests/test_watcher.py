"""Hot reload standing alone: real files, a real watchdog observer, polled with deadlines."""

import json
import os
import shutil
import time

import pytest

from conftest import wait_for
from failured.watcher import ConfigWatcher


def start_watcher(config_dir, log_dir, debounce=0.1):
    """A started watcher that also notes each reload check it makes (True when it swapped a new config in).

    No ``on_reject``: standing alone, the watcher writes a rejection to admin_alerts.log itself.
    """
    reloaded, checks = [], []
    w = ConfigWatcher(config_dir, on_reload=reloaded.append, log_dir=log_dir, debounce=debounce)
    real_reload = w.reload

    def noted_reload(force=False, why=None):
        result = real_reload(force, why)
        checks.append(result)
        return result

    w.reload = noted_reload  # the watcher's loop calls self.reload: the real one runs, and is counted
    w.reloaded, w.checks = reloaded, checks
    return w.start()


@pytest.fixture
def watcher(config_dir, tmp_path):
    w = start_watcher(config_dir, tmp_path / "logs")
    yield w
    w.stop()


def pattern_in_effect(watcher, pattern, message):
    """Whether the active config classifies ``message`` by ``pattern`` (not by a tag or the model)."""
    result = watcher.current.classifier.classify(message)
    return result.matched_by == "pattern" and result.pattern == pattern


NEW_FILE = '[[category]]\nname = "recoverable_network"\npatterns = ["gateway.*timeout"]\n'


def test_added_file_is_picked_up_within_a_second(watcher, config_dir):
    assert not pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout")
    started = time.monotonic()
    (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
    assert wait_for(lambda: pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout"))
    assert time.monotonic() - started < 1.5
    assert len(watcher.reloaded) == 1


def test_a_file_added_between_the_first_load_and_the_start_is_picked_up(config_dir, tmp_path):
    """A first start trains the model between loading the directory and watching it: an edit then made no event."""
    reloaded = []
    w = ConfigWatcher(config_dir, on_reload=reloaded.append, log_dir=tmp_path / "logs", debounce=0.1)
    (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
    w.start()
    try:
        assert wait_for(lambda: pattern_in_effect(w, "gateway.*timeout", "gateway timeout"), 10)
        assert len(reloaded) == 1
    finally:
        w.stop()


def test_editor_style_temp_file_and_rename_is_picked_up(watcher, config_dir):
    temp = config_dir / "patterns" / ".50-local.toml.swp"
    temp.write_text(NEW_FILE, encoding="utf-8")
    os.rename(temp, config_dir / "patterns" / "50-local.toml")
    assert wait_for(lambda: pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout"))


def test_removed_file_is_picked_up(watcher, config_dir):
    (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
    assert wait_for(lambda: pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout"))
    (config_dir / "patterns" / "50-local.toml").unlink()
    assert wait_for(lambda: not pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout"))


def test_broken_file_keeps_the_last_good_ruleset_and_alerts(watcher, config_dir, tmp_path):
    (config_dir / "patterns" / "50-local.toml").write_text(
        '[[category]]\nname = "recoverable_network"\npatterns = ["gateway.*timeout", "bad(?=x)"]\n', encoding="utf-8")
    alert_log = tmp_path / "logs" / "admin_alerts.log"
    assert wait_for(lambda: alert_log.exists() and alert_log.read_text(encoding="utf-8").strip())  # written last
    assert watcher.last_rejected
    assert pattern_in_effect(watcher, "connection.*timeout", "connection timeout")
    assert not pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout")  # nothing of the bad file was taken
    alerts = alert_log.read_text(encoding="utf-8").splitlines()
    alert = json.loads(alerts[-1])
    assert alert["kind"] == "config_rejected"
    assert alert["errors"][0]["key"] == 'category "recoverable_network".patterns[1]'
    assert "50-local.toml" in alert["errors"][0]["file"]
    # the next good edit is taken
    (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
    assert wait_for(lambda: pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout"))


def settle(watcher, config_dir):
    """Wait until the watcher has taken every change made so far: write a marker file and wait for it.

    The observer delivers events in order and the loop takes them in order, so once a
    snapshot holds the marker, every earlier event has been handled.
    """
    marker = config_dir / "patterns" / "99-marker.toml"
    marker.write_text('[[category]]\nname = "recoverable_network"\npatterns = ["marker.*reached"]\n',
                      encoding="utf-8")
    assert wait_for(lambda: pattern_in_effect(watcher, "marker.*reached", "marker reached"), 30)
    return [s for s in watcher.reloaded if not any(f.endswith("99-marker.toml") for f in s.files)]


def test_burst_of_writes_is_debounced_into_one_reload(config_dir, tmp_path):
    # a debounce well above a stall of the writing loop on a busy machine
    watcher = start_watcher(config_dir, tmp_path / "logs", debounce=0.5)
    try:
        for i in range(20):
            (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE + f"# {i}\n", encoding="utf-8")
        assert wait_for(lambda: watcher.reloaded, 30)
        assert len(settle(watcher, config_dir)) <= 2
    finally:
        watcher.stop()


def test_a_file_emptied_by_a_save_in_place_waits_for_its_content(watcher, config_dir, caplog):
    """``cp`` or a shell's ``>`` empty the file before writing it: an empty file is valid TOML (an empty
    failured.toml is every default: no handlers, every retry parked as manual), and must not be read as meant."""
    path = config_dir / "patterns" / "10-test.toml"
    before, written = watcher.current, path.read_text(encoding="utf-8") + "\n# saved again\n"
    with open(path, "w", encoding="utf-8") as handle, caplog.at_level("WARNING", logger="failured.config"):
        assert wait_for(lambda: "a save still being written?" in caplog.text)  # the watcher looked while it was empty
        assert watcher.current is before and not watcher.reloaded
        handle.write(written)
    assert wait_for(lambda: watcher.reloaded)
    assert watcher.current.digest != before.digest


def test_a_refused_edit_emptied_is_no_longer_a_rejection(watcher, config_dir):
    """status showed the refused text of a file that had since been emptied, beside "waits … emptied"."""
    path = config_dir / "patterns" / "95-local.toml"
    path.write_text('[[category]]\nname = "recoverable_network"\npatterns = ["(unclosed"]\n', encoding="utf-8")
    assert wait_for(lambda: watcher.last_rejected is not None)
    path.write_text("", encoding="utf-8")
    assert wait_for(lambda: watcher.waiting_on == (str(path),))
    assert watcher.last_rejected is None


def test_a_file_empty_when_loaded_does_not_hold_back_other_changes(config_dir, tmp_path):
    (config_dir / "patterns" / "40-empty.toml").write_text("", encoding="utf-8")  # empty on purpose: valid, nothing
    watcher = start_watcher(config_dir, tmp_path / "logs")
    try:
        (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
        assert wait_for(lambda: pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout"))
    finally:
        watcher.stop()


def test_unchanged_directory_is_not_reloaded(watcher, config_dir):
    path = config_dir / "patterns" / "10-test.toml"
    path.write_bytes(path.read_bytes())
    watcher.request_reload()
    assert wait_for(lambda: watcher.checks, 30)  # the watcher has looked at the directory
    assert settle(watcher, config_dir) == []


def test_a_file_saved_while_a_snapshot_builds_is_loaded_next(config_dir, tmp_path, monkeypatch):
    """A snapshot takes seconds to build when the model trains on new labels; a pattern the operator
    saves meanwhile must not be lost: the snapshot's digest is of what it read, so the next look
    (the save's own event) sees the directory differ and loads it."""
    import failured.config as config_module

    read_ruleset = config_module.load_ruleset
    saved = []

    def read_then_operator_saves(directory):
        ruleset = read_ruleset(directory)
        if not saved:  # once: the save lands after the rules were read, before the snapshot is swapped in
            (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
            saved.append(True)
        return ruleset

    w = start_watcher(config_dir, tmp_path / "logs")
    try:
        monkeypatch.setattr(config_module, "load_ruleset", read_then_operator_saves)
        w.retrain()  # new labels: a rebuild with no file changed
        assert wait_for(lambda: pattern_in_effect(w, "gateway.*timeout", "gateway timeout"), timeout=60)
        assert saved and len(w.reloaded) == 2  # the labels' rebuild, then the save's
    finally:
        w.stop()


def test_undoing_a_refused_change_clears_the_rejection(config_dir, tmp_path):
    restored = []
    watcher = ConfigWatcher(config_dir, log_dir=tmp_path / "logs", debounce=0.1, on_restore=restored.append).start()
    try:
        bad = config_dir / "patterns" / "50-local.toml"
        bad.write_text('[[category]]\nname = "recoverable_network"\npatterns = ["bad(?=x)"]\n', encoding="utf-8")
        assert wait_for(lambda: watcher.last_rejected)
        active = watcher.current
        bad.unlink()  # the operator's fix: back to the files the active snapshot was built from
        assert wait_for(lambda: watcher.last_rejected is None)
        assert restored == [active] and watcher.current is active  # nothing was loaded again
    finally:
        watcher.stop()


def test_a_directory_replaced_at_the_configured_path_is_watched(watcher, config_dir, tmp_path):
    """A deploy that puts a new directory where the old one was: edits to the new one are picked up."""
    os.rename(config_dir, tmp_path / "config.old")
    shutil.copytree(tmp_path / "config.old", config_dir)
    (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
    assert wait_for(lambda: pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout"))
    (config_dir / "patterns" / "50-local.toml").unlink()  # and the edits after it, through the new watch
    assert wait_for(lambda: not pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout"))


def test_a_reload_that_fails_unexpectedly_is_a_rejection_the_admins_hear_of(watcher, config_dir, tmp_path, monkeypatch):
    import failured.config as config_module

    def broken(directory):
        raise RuntimeError("a bug in reading rules")

    monkeypatch.setattr(config_module, "load_ruleset", broken)
    (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
    alert_log = tmp_path / "logs" / "admin_alerts.log"
    assert wait_for(lambda: alert_log.exists() and alert_log.read_text(encoding="utf-8").strip())
    [error] = watcher.last_rejected[1]
    assert "reload failed (RuntimeError: a bug in reading rules)" in error.reason
    assert pattern_in_effect(watcher, "connection.*timeout", "connection timeout")  # the last good config serves


def test_a_reload_the_database_interrupted_is_tried_again_not_rejected(config_dir, tmp_path, monkeypatch):
    """The labels come from the database: a session the server dropped (pg_terminate_backend) is no bad config."""
    import failured.watcher as watcher_module
    from failured.store import StoreUnavailableError

    monkeypatch.setattr(watcher_module, "STORE_RETRY_SECONDS", 0.1)
    calls = []

    def labels():
        calls.append(True)
        if len(calls) == 2:  # the first reload's read (the first load's was call 1)
            raise StoreUnavailableError("lost the connection: terminating connection due to administrator command")
        return ()

    watcher = ConfigWatcher(config_dir, log_dir=tmp_path / "logs", debounce=0.05, labels=labels).start()
    try:
        (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
        assert wait_for(lambda: pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout"), 30)
        assert len(calls) >= 3 and watcher.last_rejected is None
        assert not (tmp_path / "logs" / "admin_alerts.log").exists()
    finally:
        watcher.stop()


def test_an_edit_of_a_linked_pattern_files_target_is_picked_up(config_dir, tmp_path):
    """A pattern file kept elsewhere (a git checkout) and linked in: editing its target makes no event in the
    config directory, and the daemon must not keep the old rules while classify shows the new ones."""
    kept = tmp_path / "git" / "50-local.toml"
    kept.parent.mkdir()
    kept.write_text(NEW_FILE, encoding="utf-8")
    (config_dir / "patterns" / "50-local.toml").symlink_to(kept)
    watcher = start_watcher(config_dir, tmp_path / "logs")
    try:
        assert pattern_in_effect(watcher, "gateway.*timeout", "gateway timeout")
        kept.write_text(NEW_FILE.replace("gateway.*timeout", "pulley.*seized"), encoding="utf-8")
        assert wait_for(lambda: pattern_in_effect(watcher, "pulley.*seized", "pulley seized"), 30)
        kept.write_text("[[category]\\n", encoding="utf-8")  # a bad edit: refused once, not at every look
        assert wait_for(lambda: watcher.last_rejected is not None, 30)
        checks = len(watcher.checks)
        kept.parent.joinpath("other").write_text("x")  # time passes: several looks
        assert not wait_for(lambda: len(watcher.checks) > checks + 1, 3)
    finally:
        watcher.stop()

"""Hot reload standing alone: real files, a real watchdog observer, polled with deadlines."""

import json
import os
import time

import pytest

from conftest import wait_for
from failured.watcher import ConfigWatcher


@pytest.fixture
def watcher(config_dir, tmp_path):
    reloaded, rejected = [], []
    w = ConfigWatcher(config_dir, on_reload=reloaded.append, on_reject=rejected.append,
                      log_dir=tmp_path / "logs", debounce=0.1).start()
    w.reloaded, w.rejected = reloaded, rejected
    yield w
    w.stop()


def classify(watcher, message):
    return watcher.current.classifier.classify(message).category


NEW_FILE = '[[category]]\nname = "recoverable_network"\npatterns = ["gateway.*timeout"]\n'


def test_added_file_is_picked_up_within_a_second(watcher, config_dir):
    assert classify(watcher, "gateway timeout") == "unknown"
    started = time.monotonic()
    (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
    assert wait_for(lambda: classify(watcher, "gateway timeout") == "recoverable_network")
    assert time.monotonic() - started < 1.5
    assert len(watcher.reloaded) == 1


def test_editor_style_temp_file_and_rename_is_picked_up(watcher, config_dir):
    temp = config_dir / "patterns" / ".50-local.toml.swp"
    temp.write_text(NEW_FILE, encoding="utf-8")
    os.rename(temp, config_dir / "patterns" / "50-local.toml")
    assert wait_for(lambda: classify(watcher, "gateway timeout") == "recoverable_network")


def test_removed_file_is_picked_up(watcher, config_dir):
    (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
    assert wait_for(lambda: classify(watcher, "gateway timeout") == "recoverable_network")
    (config_dir / "patterns" / "50-local.toml").unlink()
    assert wait_for(lambda: classify(watcher, "gateway timeout") == "unknown")


def test_broken_file_keeps_the_last_good_ruleset_and_alerts(watcher, config_dir, tmp_path):
    (config_dir / "patterns" / "50-local.toml").write_text(
        '[[category]]\nname = "recoverable_network"\npatterns = ["gateway.*timeout", "bad(?=x)"]\n', encoding="utf-8")
    assert wait_for(lambda: watcher.rejected)
    assert classify(watcher, "connection timeout") == "recoverable_network"
    assert classify(watcher, "gateway timeout") == "unknown"  # nothing of the bad file was taken
    alerts = (tmp_path / "logs" / "admin_alerts.log").read_text(encoding="utf-8").splitlines()
    alert = json.loads(alerts[-1])
    assert alert["kind"] == "config_rejected"
    assert alert["errors"][0]["key"] == 'category "recoverable_network".patterns[1]'
    assert "50-local.toml" in alert["errors"][0]["file"]
    # the next good edit is taken
    (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE, encoding="utf-8")
    assert wait_for(lambda: classify(watcher, "gateway timeout") == "recoverable_network")


def test_burst_of_writes_is_debounced_into_one_reload(watcher, config_dir):
    for i in range(20):
        (config_dir / "patterns" / "50-local.toml").write_text(NEW_FILE + f"# {i}\n", encoding="utf-8")
    assert wait_for(lambda: watcher.reloaded)
    time.sleep(0.4)
    assert len(watcher.reloaded) <= 2


def test_unchanged_directory_is_not_reloaded(watcher, config_dir):
    path = config_dir / "patterns" / "10-test.toml"
    path.write_bytes(path.read_bytes())
    watcher.request_reload()
    time.sleep(0.4)
    assert watcher.reloaded == []

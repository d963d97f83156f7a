"""Only regular config files of a sane size are read: a FIFO or a huge file is an error naming it, never a hang."""

import os
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, wait_for, write_config
from failured.config import load_config
from failured.errors import ConfigErrors
from failured.rules import MAX_CONFIG_FILE_BYTES

CONFIG = Path(__file__).resolve().parent.parent / "config"

NEW_FILE = '[[category]]\nname = "recoverable_network"\npatterns = ["gateway.*timeout"]\n'


@pytest.mark.parametrize("name", ["patterns/50-pipe.toml", "failured.toml"])
def test_a_fifo_in_the_config_directory_is_an_error_naming_it(config_dir, name):
    os.mkfifo(config_dir / name)
    with pytest.raises(ConfigErrors) as caught:
        load_config(config_dir)
    [error] = [e for e in caught.value.errors if e.path.endswith(name.split("/")[-1])]
    assert "not a regular file" in error.reason


def test_check_config_reports_a_fifo_instead_of_hanging(config_dir):
    os.mkfifo(config_dir / "patterns" / "50-pipe.toml")
    result = run_cli("check-config", str(config_dir), timeout=60)
    assert result.returncode == 1
    assert "50-pipe.toml" in result.stdout + result.stderr and "not a regular file" in result.stdout + result.stderr


def test_an_oversized_config_file_is_refused(config_dir):
    path = config_dir / "patterns" / "50-huge.toml"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("# padding\n" * (MAX_CONFIG_FILE_BYTES // 10 + 1))
    with pytest.raises(ConfigErrors) as caught:
        load_config(config_dir)
    assert any("50-huge.toml" in e.path and "bytes" in e.reason for e in caught.value.errors)


@pytest.mark.parametrize("nested", ["a = " + "[" * 100_000 + "]" * 100_000, "a = " + "{b = " * 5_000 + "1" + "}" * 5_000])
def test_deeply_nested_toml_is_an_error_naming_the_file(config_dir, nested):
    (config_dir / "patterns" / "55-deep.toml").write_text(nested, encoding="utf-8")
    result = run_cli("check-config", str(config_dir), timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-2000:]
    assert "55-deep.toml" in output and "nested too deeply" in output


@pytest.mark.sqlite_suffices("the config watcher")
def test_a_running_daemon_survives_a_fifo_and_takes_the_next_good_edit(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    try:
        config = tmp_path / "config"
        os.mkfifo(config / "patterns" / "50-pipe.toml")
        assert wait_for(lambda: "not a regular file" in daemon.stderr(), timeout=30)
        os.unlink(config / "patterns" / "50-pipe.toml")
        (config / "patterns" / "60-local.toml").write_text(NEW_FILE, encoding="utf-8")
        assert wait_for(lambda: "reloaded" in daemon.stderr().split("not a regular file")[-1], timeout=30)
        assert daemon.stop() == 0  # SIGTERM still works: nothing blocked
    finally:
        daemon.stop()


def test_check_config_flags_a_handler_variable_that_is_not_set(tmp_path):
    main = '[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\nenv = { TOKEN = "${FH_NEVER_SET}" }\n'
    config = write_config(tmp_path / "config", main=main)
    result = run_cli("check-config", str(config))
    assert result.returncode == 1
    assert "task_types.sync.handler.env.TOKEN" in result.stderr and "${FH_NEVER_SET} is not set" in result.stderr
    result = run_cli("check-config", str(config), env={"FH_NEVER_SET": "x"})
    assert result.returncode == 0, result.stderr


def test_check_config_flags_a_channel_variable_that_is_not_set(tmp_path):
    main = ('[channels.ops]\nkind = "dingtalk"\naccess_token = "${FH_DING_TOKEN}"\nsecret = "${FH_DING_SECRET}"\n'
            '[[routes]]\naudience = "admin"\nchannels = ["ops"]\n')
    config = write_config(tmp_path / "config", main=main)
    result = run_cli("check-config", str(config), env={"FH_DING_TOKEN": "t0ken-value"})
    assert result.returncode == 1
    assert "channels.ops.secret: ${FH_DING_SECRET} is not set" in result.stderr, result.stderr
    assert "FH_DING_TOKEN" not in result.stderr and "t0ken-value" not in result.stderr
    result = run_cli("check-config", str(config), env={"FH_DING_TOKEN": "t0ken-value", "FH_DING_SECRET": "SECabc"})
    assert result.returncode == 0, result.stderr


def test_a_restart_on_a_broken_directory_runs_on_the_last_good_copy_until_an_edit_fixes_it(daemon_factory, tmp_path):
    # An operator drops a bad pattern file while the daemon is down (or it is restarted after a bad edit):
    # the daemon still starts, on the configuration it last ran, and says so until the directory is right.
    daemon = daemon_factory(FAILURE_MODEL_CACHE=str(warm_cache_copy(tmp_path / "cache"))).start()
    assert daemon.stop() == 0
    config = tmp_path / "config"
    bad = config / "patterns" / "70-local.toml"
    bad.write_text('[[category]]\nname = "recoverable_network"\npatterns = ["(unclosed"]\n', encoding="utf-8")
    daemon.start()
    assert "running on the last good configuration" in daemon.stderr() and "70-local.toml" in daemon.stderr()
    status = daemon.cli("status")
    assert status.returncode == 1 and "config invalid at start" in status.stdout + status.stderr, status.stdout
    task = int(daemon.cli("report", "--type", "sync", "--error", "connection refused").stdout.strip())
    daemon.wait_for("SELECT category FROM tasks WHERE id = ?", lambda rows: rows[0][0] == "recoverable_network",
                    15, task)  # it classifies on the last good patterns meanwhile
    alerts = (tmp_path / "logs" / "admin_alerts.log").read_text(encoding="utf-8")
    assert "启动时配置无效" in alerts  # the admins hear it (in the default language, Chinese)
    bad.write_text('[[category]]\nname = "recoverable_network"\npatterns = ["gateway.*timeout"]\n', encoding="utf-8")
    assert wait_for(lambda: daemon.cli("status").returncode == 0, timeout=30), daemon.cli("status").stdout
    assert daemon.stop() == 0


def warm_cache_copy(directory):
    """A cache directory of the test's own holding the models the shared cache has: no training, no copy."""
    from failured.modelcache import cache_dir

    directory.mkdir(mode=0o700)
    shared = cache_dir()
    for kept in list(shared.glob("model-*.marshal")) + list(shared.glob("concepts-*.hs")) if shared else []:
        shutil.copy(kept, directory / kept.name)
    return directory


def test_without_a_last_good_copy_a_broken_directory_still_stops_the_start(tmp_path):
    config = write_config(tmp_path / "config", '[[category]]\nname = "recoverable_network"\npatterns = ["(x"]\n')
    result = run_cli("run", env={"FAILURE_CONFIG_DIR": str(config), "FAILURE_DB": str(tmp_path / "db.sqlite"),
                                 "FAILURE_MODEL_CACHE": str(tmp_path / "cache"), "FAILURE_HTTP_ADDR": "off",
                                 "FAILURE_LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path)
    assert result.returncode != 0 and "10-test.toml" in result.stderr and "RE2 cannot compile" in result.stderr


def _as_nobody(function, *args):
    """``function(*args)`` in a forked child that has become user nobody: what the service's user meets where the
    configuration is not its to read (as root, nothing is refused). Its result, or the error it raised, as text."""
    import multiprocessing

    def child(queue):
        try:
            os.setgid(65534)
            os.setuid(65534)
            queue.put(repr(function(*args)))
        except BaseException as exc:  # noqa: BLE001 - everything the child met goes back to the test
            queue.put(f"{type(exc).__name__}: {exc}")

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    try:
        return queue.get(timeout=60)
    finally:
        process.join(10)


@pytest.mark.parametrize("locked", [".", "codes", "patterns"])
def test_a_config_directory_this_user_may_not_read_is_a_configuration_error_naming_it(locked):
    """It had been a traceback (the directory itself), or read as empty: every code table dropped without a word,
    or "no pattern files" for a directory full of them."""
    import tempfile

    if os.getuid() != 0:
        pytest.skip("needs root, to become another user")
    top = Path(tempfile.mkdtemp(prefix="failured-perm-"))  # under /tmp, which every user may enter
    try:
        os.chmod(top, 0o755)
        config = top / "config"
        shutil.copytree(CONFIG, config)
        for path in [config, *config.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(config / locked, 0o700)
        said = _as_nobody(lambda: load_config(config, model=False) and "loaded")
        assert said.startswith("ConfigErrors") and str(config / locked) in said, said
        assert "cannot be read by this user (uid 65534)" in said, said
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_hidden_files_are_never_read_and_check_config_notes_what_it_skips_or_overrides(config_dir):
    # Emacs' lock file is a dangling link; macOS's AppleDouble copy is binary: neither is configuration.
    os.symlink("root@host.4242:1733100000", config_dir / "patterns" / ".#50-local.toml")
    (config_dir / "patterns" / "._50-local.toml").write_bytes(b"\x00\x05\x16\x07 not toml")
    (config_dir / "50-stray.toml").write_text(NEW_FILE, encoding="utf-8")  # a pattern file at the top level
    (config_dir / "pattern").mkdir()  # a misspelt directory
    (config_dir / "patterns" / "60-upper.TOML").write_text(NEW_FILE, encoding="utf-8")
    # A local file that sorts before the one defining the category loses its setting to it.
    (config_dir / "patterns" / "05-local.toml").write_text(
        '[[category]]\nname = "recoverable_network"\nretry = { delays = [1, 2], max_attempts = 2 }\n', encoding="utf-8")
    load_config(config_dir, model=False)
    result = run_cli("check-config", str(config_dir), timeout=60)
    assert result.returncode == 0, result.stderr
    notes = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("note:")]
    assert any("10-test.toml replaces retry of category \"recoverable_network\" that 05-local.toml set" in n
               for n in notes), notes
    for name in (".#50-local.toml", "._50-local.toml", "50-stray.toml", "pattern:", "60-upper.TOML"):
        assert any(name in note and "not read" in note for note in notes), (name, notes)


def test_a_byte_order_mark_is_accepted_and_another_encoding_is_refused_with_its_line(config_dir):
    rule = '[[category]]\nname = "unrecoverable_business"\npatterns = [\'海关扣留\']\n'
    (config_dir / "patterns" / "50-bom.toml").write_bytes(b"\xef\xbb\xbf" + rule.encode("utf-8"))
    business = load_config(config_dir, model=False).ruleset.category("unrecoverable_business")
    assert "海关扣留" in [pattern.text for pattern in business.patterns]
    (config_dir / "patterns" / "60-gbk.toml").write_bytes(rule.encode("gbk"))
    with pytest.raises(ConfigErrors) as caught:
        load_config(config_dir, model=False)
    [error] = caught.value.errors
    assert error.path.endswith("60-gbk.toml") and "not UTF-8" in error.reason and "line 3" in error.reason


def test_a_failured_toml_linking_to_nothing_is_an_error_not_every_default(config_dir, tmp_path):
    os.symlink(tmp_path / "moved-away.toml", config_dir / "failured.toml")
    with pytest.raises(ConfigErrors) as caught:
        load_config(config_dir, model=False)
    assert "moved-away.toml, which does not exist" in str(caught.value)


def test_a_removed_failured_toml_is_refused_while_running_and_at_start(tmp_path, monkeypatch):
    from failured.watcher import ConfigWatcher

    monkeypatch.setenv("FAILURE_MODEL_CACHE", str(tmp_path / "cache"))
    config = write_config(tmp_path / "config", main='[task_types.sync.handler]\nkind = "python"\n'
                                                    'target = "json:dumps"\n')
    watcher = ConfigWatcher(config, log_dir=tmp_path / "logs", debounce=0.05, keep_last_good=True).start()
    try:
        assert "sync" in watcher.current.task_types
        (config / "failured.toml").rename(tmp_path / "failured.toml.bak")  # an operator's mv, by mistake
        watcher.request_reload()
        assert wait_for(lambda: watcher.last_rejected is not None, 30)
        assert "failured.toml" in str(watcher.last_rejected[1][0]) and "sync" in watcher.current.task_types
    finally:
        watcher.stop()
    restarted = ConfigWatcher(config, log_dir=tmp_path / "logs", keep_last_good=True).start()
    try:  # a start without it runs on the last good copy, which had it
        assert "sync" in restarted.current.task_types and restarted.started_on_last_good is not None
    finally:
        restarted.stop()


def test_check_config_lists_the_problems_of_patterns_code_tables_and_failured_toml_in_one_pass(config_dir):
    (config_dir / "patterns" / "50-bad.toml").write_text(
        '[[category]]\nname = "x"\naction = "nope"\npriority = 1\npatterns = ["(unclosed"]\n', encoding="utf-8")
    (config_dir / "codes").mkdir(exist_ok=True)
    (config_dir / "codes" / "95-bad.toml").write_text('kind = "keyed"\nkeys = ["errcode"]\n[codes]\n"1" = "x"\n',
                                                      encoding="utf-8")
    with open(config_dir / "failured.toml", "a", encoding="utf-8") as main:
        main.write('\n[channels.x]\nkind = "pigeon"\n')
    checked = run_cli("check-config", str(config_dir))
    assert checked.returncode == 1
    for problem in ("50-bad.toml: category \"x\".action: unknown action 'nope'", "(unclosed",
                    '95-bad.toml: table "bad".priority: missing', "failured.toml: channels.x.kind: is 'pigeon'"):
        assert problem in checked.stdout + checked.stderr, checked.stdout + checked.stderr


def test_check_config_notes_an_empty_file_that_a_running_daemon_would_wait_on(config_dir):
    (config_dir / "patterns" / "95-local.toml").write_text("", encoding="utf-8")
    checked = run_cli("check-config", str(config_dir))
    assert checked.returncode == 0
    assert f"note: {config_dir / 'patterns' / '95-local.toml'}: empty: it adds nothing" in checked.stdout


def test_check_config_shows_a_task_type_s_retry_overrides(config_dir):
    with open(config_dir / "failured.toml", "a", encoding="utf-8") as main:
        main.write('\n[task_types.sync.handler]\nkind = "command"\nargv = ["true"]\n[task_types.sync.retry]\n'
                   'delays = [5, 10]\nmax_attempts = 4\n[task_types.sync.retry_by_category.recoverable_network]\n'
                   'delays = [1]\n')
    checked = run_cli("check-config", str(config_dir))
    assert checked.returncode == 0, checked.stderr
    assert "task type sync: handler command true, retry 5/10s max 4; recoverable_network: 1s" in checked.stdout

"""``failured init`` writes the shipped configuration, never the local files beside it in a checkout."""

import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_cli


@pytest.fixture
def checkout(tmp_path):
    """A git checkout of failured whose config/ holds a local override, as the README suggests making."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "failured", root / "failured", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "config", root / "config")
    for local in root.glob("config/patterns/*local*"):
        local.unlink()  # whatever sits in the real checkout is not ours to copy
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "config"], check=True)
    (root / "config" / "patterns" / "50-local.toml").write_text('[[category]]\nname = "recoverable_network"\n'
                                                              'patterns = ["only here"]\n')
    (root / "config" / "failured.local-notes").write_text("not shipped")
    return root


def test_init_in_a_checkout_writes_only_the_tracked_files(checkout, tmp_path):
    target = tmp_path / "etc"
    result = subprocess.run([sys.executable, "-m", "failured", "init", str(target)], cwd=checkout,
                            env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    tracked = sorted(str(p.relative_to(checkout / "config")) for p in (checkout / "config").rglob("*")
                     if p.is_file() and "local" not in p.name)
    assert written == tracked
    assert "patterns/50-local.toml" not in written and "failured.toml" in written
    assert run_cli("check-config", str(target)).returncode == 0


def test_init_over_the_checkouts_own_config_says_it_is_the_shipped_copy_and_writes_nothing(checkout):
    before = {p: p.read_bytes() for p in (checkout / "config").rglob("*") if p.is_file()}
    result = subprocess.run([sys.executable, "-m", "failured", "init", "./config", "--force"], cwd=checkout,
                            env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "config is the shipped configuration itself" in result.stderr and "git checkout -- config/" in result.stderr
    assert {p: p.read_bytes() for p in (checkout / "config").rglob("*") if p.is_file()} == before


def test_init_refuses_a_directory_with_files_unless_forced(tmp_path):
    target = tmp_path / "etc"
    target.mkdir()
    (target / "mine.toml").write_text("")
    refused = run_cli("init", str(target))
    assert refused.returncode == 2 and "--force" in refused.stderr
    forced = run_cli("init", str(target), "--force")
    assert forced.returncode == 0 and (target / "mine.toml").exists() and (target / "failured.toml").exists()


@pytest.mark.parametrize("target, reason", [("afile", "Not a directory"), ("afile/sub", "Not a directory")])
def test_init_into_a_path_it_cannot_create_is_one_line_and_exit_2(tmp_path, target, reason):
    (tmp_path / "afile").write_text("")
    result = run_cli("init", target, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot write the configuration to {target}" in result.stderr and reason in result.stderr


def test_run_without_a_config_directory_creates_nothing_and_says_where_it_looked(tmp_path):
    result = run_cli("run", env={"FAILURE_HTTP_ADDR": "off"}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"no config directory at FAILURE_CONFIG_DIR=config (working directory {tmp_path})" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no database, logs or reports left behind to catch later reports


def test_a_command_without_its_config_directory_says_where_it_looked(tmp_path):
    result = run_cli("check-config", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"no such directory (looked at {tmp_path / 'config'}): run failured where its config/ is" in result.stderr
    (tmp_path / "afile").write_text("")
    result = run_cli("check-config", "afile", cwd=tmp_path)
    assert "afile: not a directory: give the config directory" in result.stderr


def test_a_bad_value_in_dotenv_names_the_file(tmp_path):
    (tmp_path / ".env").write_text("FAILURE_POLL_SECONDS=abc\n")
    result = run_cli("report", "--type", "sync", "--error", "boom", cwd=tmp_path)
    assert result.returncode == 2
    assert f"FAILURE_POLL_SECONDS='abc' is not a number (set in {tmp_path / '.env'}" in result.stderr

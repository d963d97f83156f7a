"""Shared fixtures: real SQLite files and real config directories in tmp_path."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from failured.clock import ManualClock
from failured.store import open_store

REPO = Path(__file__).resolve().parent.parent

SMALL_PATTERNS = """
[[category]]
name = "recoverable_network"
label = "可恢复网络错误"
label_en = "Recoverable network error"
action = "retry"
priority = 30
retry = { delays = [0.05, 0.1, 0.2], max_attempts = 3 }
exception_types = ["ConnectTimeout", "requests.exceptions.ReadTimeout"]
tags = ["NETWORK"]
patterns = ['connection.*timeout', 'connection.*refused', '连接.*超时']
suggestion = "检查网络"
suggestion_en = "Check the network"

[[category]]
name = "unrecoverable_data"
label = "不可恢复数据错误"
label_en = "Unrecoverable data error"
action = "notify_admin"
priority = 10
exception_types = ["JSONDecodeError"]
tags = ["DATA"]
patterns = ['malformed.*json', 'validation.*failed']

[[category]]
name = "unrecoverable_business"
label = "不可恢复业务错误"
label_en = "Unrecoverable business error"
action = "notify_user"
priority = 20
tags = ["BUSINESS"]
patterns = ['not found', '不存在']
suggestion = "检查订单号"
suggestion_en = "Check the order number"
"""


def write_config(directory, patterns=SMALL_PATTERNS, main=""):
    """A config directory with one pattern file and an optional failured.toml."""
    directory = Path(directory)
    (directory / "patterns").mkdir(parents=True, exist_ok=True)
    (directory / "patterns" / "10-test.toml").write_text(textwrap.dedent(patterns), encoding="utf-8")
    if main:
        (directory / "failured.toml").write_text(textwrap.dedent(main), encoding="utf-8")
    return directory


@pytest.fixture
def config_dir(tmp_path):
    return write_config(tmp_path / "config")


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path / "data" / "failured.db")
    yield store
    store.close()


@pytest.fixture
def clock():
    return ManualClock()


def run_cli(*args, env=None, cwd=None, input=None, timeout=60):
    """Run the real ``failured`` command in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "failured", *args], env=full_env, cwd=cwd,
                          input=input, capture_output=True, text=True, timeout=timeout)

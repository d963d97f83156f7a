"""sd_notify against real Unix datagram sockets, and the shipped unit file checked by systemd-analyze."""

import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from failured.sdnotify import Notifier

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "failured.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not on PATH (not a systemd host)"
)


@pytest.fixture
def listener(tmp_path):
    """A bound AF_UNIX datagram socket standing in for systemd; yields (socket, NOTIFY_SOCKET value)."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_ready_status_stopping_watchdog_send_exact_datagrams(listener):
    sock, address = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})

    notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    notifier.ready(status="watching 3 tasks")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching 3 tasks"
    notifier.status("scan: 12 tasks")
    assert sock.recv(4096) == b"STATUS=scan: 12 tasks"
    notifier.reloaded()
    assert sock.recv(4096) == b"READY=1"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_reloading_carries_current_monotonic_usec(listener):
    sock, address = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert match, "expected RELOADING=1 followed by MONOTONIC_USEC"
    assert before <= int(match.group(1)) <= after


def test_abstract_namespace_socket_is_reached_through_at_prefix():
    name = f"failured-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready(status="up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_without_notify_socket_every_call_is_a_noop():
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("x")
    notifier.reloading()
    notifier.reloaded()
    notifier.stopping()
    notifier.watchdog()


def test_missing_socket_path_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.DEBUG, logger="failured.sdnotify"):
        notifier.ready()
        notifier.watchdog()
    assert "sd_notify" in caplog.text


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert Notifier.from_env({"WATCHDOG_USEC": "10000000"}).watchdog_interval == 5.0
    own = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(own).watchdog_interval == 5.0


def test_watchdog_meant_for_another_pid_is_ignored():
    other = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval is None


def test_no_or_bad_watchdog_usec_means_no_watchdog():
    assert Notifier.from_env({}).watchdog_interval is None
    assert Notifier.from_env({"WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert Notifier.from_env({"WATCHDOG_USEC": "soon"}).watchdog_interval is None


def test_unit_declares_notify_watchdog_restart_and_reload():
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "KillMode=mixed"):
        assert re.search(rf"^{line}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^ExecReload=.*-HUP \$MAINPID$", text, re.M)


def test_unit_allows_open_files_for_twice_the_api_connection_cap():
    from failured.settings import Settings

    limit = re.search(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.M)
    assert limit, "LimitNOFILE= is not set: systemd's default soft limit is 1,024"
    assert int(limit.group(1)) >= 2 * Settings().http_max_connections + 1024


def _analyze(*args):
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, errors="replace",
        timeout=60, env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
    )


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart's binary exists, and failured is not installed here:
    # check a copy that runs /bin/true instead, so every other check still applies.
    text = re.sub(r"^ExecStart=\S+", "ExecStart=" + shutil.which("true"), UNIT.read_text(), flags=re.M)
    copy = tmp_path / UNIT.name
    copy.write_text(text)

    result = _analyze("verify", str(copy))

    output = result.stdout + result.stderr
    # Unknown keys are only warnings (exit 0); any line naming our unit is a problem.
    about_unit = [line for line in output.splitlines() if "failured" in line]
    assert result.returncode == 0 and not about_unit, output


@needs_systemd_analyze
def test_unit_exposure_score_is_at_most_2():
    result = _analyze("security", "--offline=yes", str(UNIT))

    match = re.search(r"Overall exposure level for failured\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_a_receiver_that_stops_reading_never_blocks_the_daemon(tmp_path):
    import socket as sockets
    import time

    from failured.sdnotify import Notifier

    path = str(tmp_path / "full.sock")
    receiver = sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM)
    receiver.bind(path)
    try:
        notifier = Notifier(path)
        started = time.monotonic()
        for _ in range(14):  # more than the kernel queues for a datagram socket (10 by default)
            notifier.status("x" * 100)
        notifier.stopping()
        assert time.monotonic() - started < 5 * 0.5 + 1.5  # each send beyond the queue gives up after its timeout
        assert receiver.recv(4096) == b"STATUS=" + b"x" * 100
    finally:
        receiver.close()


def test_the_env_example_lists_every_variable_the_daemon_reads():
    from failured.settings import variables

    example = (UNIT.parent / "failured.env.example").read_text(encoding="utf-8")
    listed = set(re.findall(r"^#?(FAILURE_[A-Z_]+)=", example, re.MULTILINE))
    assert listed == {name for name, _, _ in variables()}

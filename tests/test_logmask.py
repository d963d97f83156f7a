"""The daemon's log lines: secrets masked, times in UTC and marked so, whatever zone the server is set to."""

import logging
import time

import pytest

from failured import logmask


@pytest.fixture
def shanghai(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_log_line_gives_its_time_in_utc_as_the_reports_do(shanghai):
    assert time.localtime(0).tm_hour == 8  # the zone is in force: local time is not UTC here
    record = logging.LogRecord("failured.daemon", logging.INFO, __file__, 1, "scan: %s", ("report r.json",), None)
    record.created, record.msecs = 1710741731.532, 532.0  # 2024-03-18 06:02:11.532 UTC
    line = logmask.MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
    assert line == "2024-03-18T06:02:11.532Z INFO failured.daemon: scan: report r.json"


def test_a_secret_in_a_log_line_is_masked():
    logmask.use_secrets(lambda: ("s3cr3t-token-value",))
    try:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "posting to %s", ("https://h/?k=s3cr3t-token-value",),
                                   None)
        assert "s3cr3t-token-value" not in logmask.MaskingFormatter("%(message)s").format(record)
    finally:
        logmask.use_secrets(lambda: ())

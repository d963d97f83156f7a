"""Time from starting `failured run` to READY=1 (sd_notify) with 1,000,000 tasks in the database."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, emit, percentile

import analysis as analysis_bench

RUNS = 5


def time_to_ready(directory, db):
    notify_path = str(directory / "notify.sock")
    if os.path.exists(notify_path):
        os.unlink(notify_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(60)
    env = {**os.environ, "FAILURE_DB": str(db), "FAILURE_CONFIG_DIR": str(REPO / "config"),
           "FAILURE_LOG_DIR": str(directory / "logs"), "FAILURE_REPORT_DIR": str(directory / "reports"),
           "FAILURE_LOG_LEVEL": "WARNING", "NOTIFY_SOCKET": notify_path}
    started = time.perf_counter()
    daemon = subprocess.Popen([sys.executable, "-m", "failured", "run"], env=env, cwd=directory)
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        return time.perf_counter() - started
    finally:
        daemon.terminate()
        daemon.wait(60)
        sock.close()


def main():
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        db = directory / "startup.db"
        analysis_bench.build(db, time.time())
        scheduled = subprocess.run(["sqlite3", str(db), "SELECT count(*) FROM tasks WHERE status = 'scheduled'"],
                                   capture_output=True, text=True).stdout.strip() if shutil.which("sqlite3") else "?"
        print(f"startup: {analysis_bench.ROWS:,} tasks ({scheduled} scheduled retries to load into the heap)")
        timings = [time_to_ready(directory, db) for _ in range(RUNS)]
    emit("startup", {"rows": analysis_bench.ROWS, "READY p50 s": round(percentile(timings, 0.5), 2),
                     "READY max s": round(max(timings), 2)}, "<= 2 s to READY with 1,000,000 rows")


if __name__ == "__main__":
    main()

"""Time from report_failure to the start of a zero-delay retry, through a real daemon subprocess."""

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, emit, percentile

from failured.intake import record_failure
from failured.store import open_store

REPORTS = 100


def make_config(directory):
    shutil.copytree(REPO / "config" / "patterns", directory / "patterns")
    (directory / "patterns" / "99-bench.toml").write_text(
        '[[category]]\nname = "recoverable_network"\nretry = { delays = [0] }\n', encoding="utf-8")
    (directory / "failured.toml").write_text(
        '[task_types.bench.handler]\nkind = "python"\ntarget = "stamp_handler:run"\ntimeout = 10\n', encoding="utf-8")


def main():
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        make_config(directory / "config")
        stamps = directory / "stamps"
        env = {**os.environ, "FAILURE_DB": str(directory / "r.db"), "FAILURE_CONFIG_DIR": str(directory / "config"),
               "FAILURE_LOG_DIR": str(directory / "logs"), "FAILURE_LOG_LEVEL": "WARNING",
               "BENCH_STAMP_FILE": str(stamps), "PYTHONPATH": f"{Path(__file__).parent}:{REPO}"}
        daemon = subprocess.Popen([sys.executable, "-m", "failured", "run"], env=env, cwd=directory)
        try:
            store = open_store(directory / "r.db")
            time.sleep(2)  # let it start
            rng = random.Random(3)
            print(f"reaction: {REPORTS} reports, one every 50-150 ms, default FAILURE_POLL_SECONDS (0.5)")
            for _ in range(REPORTS):
                record_failure(store, "bench", "connection timeout", payload={"sent": time.time()})
                time.sleep(rng.uniform(0.05, 0.15))
            deadline = time.time() + 10
            while time.time() < deadline and (not stamps.exists() or len(stamps.read_text().split()) < REPORTS):
                time.sleep(0.1)
        finally:
            daemon.terminate()
            daemon.wait(30)
        delays_ms = [float(x) * 1000 for x in stamps.read_text().split()]
    emit("reaction", {"retries started": len(delays_ms), "p50 ms": round(percentile(delays_ms, 0.5), 1),
                      "p99 ms": round(percentile(delays_ms, 0.99), 1)}, "p50 <= 1 s")


if __name__ == "__main__":
    main()

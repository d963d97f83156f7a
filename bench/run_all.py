"""Run every benchmark and print one table of their figures: python bench/run_all.py"""

import json
import subprocess
import sys
from pathlib import Path

BENCHES = ["classify.py", "generalize.py", "intake.py", "retry_timer.py", "reaction.py", "flood.py", "notify_burst.py",
           "analysis.py", "startup.py", "api_ingest.py", "console.py", "mask.py",
           # These need the local services: Redis (the Celery round trip) and PostgreSQL.
           "celery_roundtrip.py", "intake_postgres.py", "analysis_postgres.py", "migrate_store.py", "scale.py"]


def main():
    here = Path(__file__).resolve().parent
    names = sys.argv[1:] or BENCHES
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        result = subprocess.run([sys.executable, str(here / name)], capture_output=True, text=True)
        sys.stdout.write(result.stdout)
        if result.returncode != 0:
            sys.stdout.write(result.stderr[-2000:])
            rows.append((name, "FAILED", "", ""))
            continue
        line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
        data = json.loads(line[len("RESULT "):])
        for key, value in data["figures"].items():
            rows.append((data["bench"], key, value, data["target"]))
    print("\n| bench | figure | value | target |\n|---|---|---|---|")
    shown = set()
    for bench, key, value, target in rows:
        print(f"| {bench} | {key} | {value} | {target if bench not in shown else ''} |")
        shown.add(bench)


if __name__ == "__main__":
    main()

"""`--store postgresql` for the benches: a fresh schema of FAILURE_TEST_POSTGRES_URL, dropped afterwards.

FAILURE_TEST_POSTGRES_URL defaults to postgresql://root@127.0.0.1:5432/test. ``BENCH_STORE=postgresql``
in the environment does the same as the option.
"""

import contextlib
import os
import sys
import uuid

URL = os.environ.get("FAILURE_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")


def store_kind(argv=None):
    """'sqlite' or 'postgresql', from ``--store KIND`` (removed from argv) or BENCH_STORE."""
    argv = sys.argv if argv is None else argv
    kind = os.environ.get("BENCH_STORE", "sqlite")
    if "--store" in argv:
        at = argv.index("--store")
        kind = argv[at + 1] if at + 1 < len(argv) else ""
        del argv[at:at + 2]
    if kind not in ("sqlite", "postgresql"):
        raise SystemExit(f"--store takes sqlite or postgresql, not {kind!r}")
    return kind


def schema_url(name):
    return f"{URL}{'&' if '?' in URL else '?'}options=-csearch_path%3D{name}"


@contextlib.contextmanager
def fresh_schema(prefix="bench"):
    """Yield the URL of a new, empty schema; drop it (and everything in it) afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    try:
        yield schema_url(name)
    finally:
        with psycopg.connect(URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {name} CASCADE")

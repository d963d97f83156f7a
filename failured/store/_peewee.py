"""peewee, imported without its PostgreSQL drivers: psycopg costs ~0.15 CPU-s to import, and every
``failured`` process (each report, each CLI call) would pay it even on SQLite. The PostgreSQL store
loads psycopg itself, through ``Psycopg3Adapter`` below.

Every module of the store imports peewee from here (``from ._peewee import pw``), so this is the
first import of peewee in the process unless something outside failured imported it already (then
the drivers were loaded there, and nothing here changes).
"""

import sys
import uuid

_HIDDEN = [name for name in ("psycopg", "psycopg2", "psycopg2cffi") if name not in sys.modules]
sys.modules.update(dict.fromkeys(_HIDDEN, None))  # an import of a None entry raises ImportError
try:
    import peewee as pw
finally:
    for _name in _HIDDEN:
        if sys.modules.get(_name, False) is None:
            del sys.modules[_name]


class Psycopg3Adapter(pw.Psycopg3Adapter):
    """peewee's psycopg 3 adapter, with psycopg imported when the first PostgreSQL store is made."""

    def __init__(self):
        import psycopg
        from psycopg.pq import TransactionStatus
        from psycopg.types.json import Json, Jsonb

        super().__init__()
        self.psycopg, self.status = psycopg, TransactionStatus
        self.txn_idle, self.txn_inerror = TransactionStatus.IDLE, TransactionStatus.INERROR
        self.txn_unknown = TransactionStatus.UNKNOWN
        self.json_type, self.jsonb_type = Json, Jsonb

    def check_driver(self):
        pass  # __init__ imported it

    def get_binary_type(self):
        return self.psycopg.Binary

    def connect(self, db, **params):
        if db._encoding:
            params.setdefault("client_encoding", db._encoding)
        if db.database.startswith("postgresql://"):
            params.setdefault("conninfo", db.database)
        else:
            params.setdefault("dbname", db.database)
        return self.psycopg.connect(**params)

    def server_side_cursor(self, conn):
        in_transaction = self.txn_status(conn) == self.status.INTRANS
        return conn.cursor(name=str(uuid.uuid1()), withhold=not in_transaction)

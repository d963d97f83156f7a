"""Schemathesis against a real ApiServer over a real SQLite store: the API and its OpenAPI document agree.

Bounded and repeatable: 50 derandomized examples per operation, no example database.
Every answer must be documented (status, content type, schema, headers) and none may be a 5xx.

The schema comes from a fixture (schemathesis's lazy loading): its test cases are built when the
test runs, once, on the one xdist worker that runs it, and each operation is a subtest named by its
method and path. Loaded at import, ``schema.parametrize()`` would build every operation's cases at
collection, in every worker (~1.3 CPU-s each). As one test of ~12 s, it is started first
(conftest's RUN_FIRST), never left to run alone at the end of a parallel run.
"""

import json
from importlib import resources

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from conftest import SMALL_PATTERNS, write_config
from failured.api import ApiServer
from failured.backend import Backend
from failured.clock import SystemClock
from failured.config import load_config
from failured.metrics import Metrics
from failured.settings import load_settings
from failured.store import open_store

TOKEN = "schemathesis-token-0123456789"
schema = schemathesis.pytest.from_fixture("openapi_schema")


@pytest.fixture(scope="module")
def openapi_schema():
    """The OpenAPI document failured serves, as schemathesis reads it."""
    spec = json.loads(resources.files("failured").joinpath("openapi.json").read_text(encoding="utf-8"))
    schema = schemathesis.openapi.from_dict(spec)
    # The token as schemathesis's own header, not only the call's: a case it made negative by leaving the
    # token out, then sent with the token by the call, was a valid request that it expected refused.
    schema.config.update(headers={"Authorization": f"Bearer {TOKEN}"})
    return schema


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis's lazy loader names each operation's subtest through ``node._nodeid``, which
    pytest 9.2 no longer has (it keeps the id elsewhere and derives ``nodeid`` from it): give it one."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("schemathesis")
    store = open_store(workdir / "data" / "failured.db")
    snapshot = load_config(write_config(workdir / "config", SMALL_PATTERNS), "en")
    metrics = Metrics()
    metrics.bind(store, lambda: 0, SystemClock())
    backend = Backend(store, load_settings({}), lambda: snapshot, metrics_registry=metrics,
                      health=lambda: (True, {"intake": True}))
    server = ApiServer("127.0.0.1", 0, backend, token=TOKEN).start()
    session = requests.Session()
    # One session for the ~1,000 requests, not one each; trust_env off: no proxy lookup in the environment per request.
    session.trust_env = False
    yield f"http://127.0.0.1:{server.port}", session
    session.close()
    server.stop()
    store.close()


@schema.parametrize()
@settings(max_examples=50, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_none_is_a_server_error(case, api):
    base_url, session = api
    case.call_and_validate(base_url=base_url, session=session)

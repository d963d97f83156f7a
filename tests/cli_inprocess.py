"""Run ``failured`` commands in the test's own process: the same ``failured.cli.main`` that
``python -m failured`` calls, without a new interpreter per call.

A subprocess costs ~0.45 CPU-s (interpreter, imports, config and model load); tests that call a
read-only command many times (``status`` before and after a change) use this instead, and keep
one real subprocess each to prove the command itself.
"""

import logging
import os
import subprocess

import pytest

from failured.cli import main


@pytest.fixture(name="cli")
def cli_fixture(monkeypatch, capsys, tmp_path):
    """``cli(*args, env={...})`` -> a CompletedProcess (returncode, stdout, stderr), as ``run_cli`` gives.

    The environment holds no ``FAILURE_*`` variable but those in ``env``, as with ``run_cli``; the
    working directory is ``tmp_path`` (no ``.env`` is read from the checkout); the root logger the
    command sets up is put back afterwards.
    """
    def run(*args, env=None):
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        with monkeypatch.context() as patch:
            for name in [n for n in os.environ if n.startswith("FAILURE_")]:
                patch.delenv(name)
            for name, value in (env or {}).items():
                patch.setenv(name, str(value))
            patch.chdir(tmp_path)
            capsys.readouterr()  # only this command's output
            try:
                code = main(list(args))
            finally:
                root.handlers[:] = handlers
                root.setLevel(level)
            out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["failured", *args], code, out, err)

    return run

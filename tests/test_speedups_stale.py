"""A compiled extension built from another version of its source is not used.

An editable install builds failured._speedups once; a ``git pull`` that changes _speedups.c leaves
that build in place. Its functions may compute what the Python code no longer does, so failured
runs the Python code instead (the same answers, slower) and says how to rebuild.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from failured import speedups

PACKAGE = Path(speedups.__file__).parent
needs_build = pytest.mark.skipif(speedups.speedups is None, reason="failured._speedups is not built (no C compiler "
                                                                   "at install): nothing compiled to go stale")


@needs_build
def test_the_build_records_the_hash_of_the_source_it_was_built_from():
    assert speedups._built_from_this_source(speedups.speedups)
    assert len(speedups.speedups.source_sha256) == 64


@needs_build
def test_a_build_of_another_source_is_left_unused_and_the_log_says_how_to_rebuild(tmp_path):
    copy = tmp_path / "failured"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "_speedups.c", "a", encoding="utf-8") as source:
        source.write("\n/* changed by a git pull */\n")
    probe = ("import failured.classify as c, failured.model as m, failured.codes as k, failured.fingerprint as f\n"
             "print(c._compiled_opaque_folded, m._compiled_features, k.NATIVE_FINDERS, f.NATIVE_PASSES)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "None None None None"
    assert "built from another version of failured/_speedups.c" in result.stderr
    assert "pip install -e ." in result.stderr


def test_without_the_source_beside_it_a_build_is_used_as_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(speedups, "SOURCE", tmp_path / "absent.c")

    class Built:
        source_sha256 = "0" * 64

    assert speedups._built_from_this_source(Built)

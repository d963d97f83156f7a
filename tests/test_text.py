"""Text that is not valid UTF-8 (a command line's undecodable bytes, a lone surrogate) never crashes classification."""

import subprocess
import sys

from failured.config import load_config
from failured.text import clean_text

from conftest import REPO


def test_a_lone_surrogate_is_classified_as_the_store_would_hold_it():
    classifier = load_config(REPO / "config", "en", None).classifier
    raw = classifier.classify("x \udcff OSError: [Errno 28] No space left on device", "OSError\ud800")
    clean = classifier.classify(clean_text("x \udcff OSError: [Errno 28] No space left on device"), clean_text("OSError\ud800"))
    assert raw == clean
    assert raw.category == "recoverable_system"
    assert "\ufffd" in raw.message


def test_classify_reads_undecodable_bytes_from_its_argument_and_stdin():
    command = [sys.executable, "-m", "failured", "classify"]
    argument = subprocess.run([*command, b"x \xff 503 Service Unavailable"], cwd=REPO, capture_output=True)
    assert argument.returncode == 0, argument.stderr
    assert argument.stdout.startswith("category:    recoverable_temporary".encode())
    lines = subprocess.run([*command, "--json", "-"], cwd=REPO, capture_output=True,
                           input=b"abc \xff\xfe ENOSPC\nsecond \xc3( line\n")
    assert lines.returncode == 0, lines.stderr
    assert len(lines.stdout.splitlines()) == 2

"""The model is trained in a child process (failured/training.py): the same model as training here,
and training here when the child cannot run."""

import logging
import sys

from failured.classify import learned_fallback
from failured.training import train_apart

NAMES = frozenset({"recoverable_network", "unrecoverable_data"})  # a small category set trains in seconds
LABELS = (("unrecoverable_data", None, "frobnicated payload in field 7"),)


def test_the_model_trained_in_a_child_is_the_model_trained_here():
    apart = train_apart.__wrapped__(NAMES, LABELS)
    assert apart.state() == learned_fallback(NAMES, LABELS).state()
    assert apart.size == learned_fallback(NAMES, LABELS).size  # the label was trained on too


def test_a_child_that_cannot_start_or_fails_leaves_training_to_this_process(monkeypatch, caplog):
    expected = learned_fallback(NAMES, LABELS).state()
    caplog.set_level(logging.WARNING, logger="failured.model")
    for executable, reason in (("/nonexistent/python3", "FileNotFoundError"), ("/bin/false", "exit status 1")):
        monkeypatch.setattr(sys, "executable", executable)
        assert train_apart.__wrapped__(NAMES, LABELS).state() == expected
        assert f"training the model in a child process failed ({reason}" in caplog.text

"""The trained model is kept on disk between processes, keyed by everything it depends on."""

import os

from failured import model as learner, modelcache
from failured.classify import learned_fallback

NAMES = frozenset({"recoverable_network", "unrecoverable_data", "unrecoverable_business"})


def train_counting(calls):
    def train():
        calls.append(1)
        return learned_fallback(NAMES, ())
    return train


def test_a_second_load_reads_the_cache_instead_of_training(tmp_path, monkeypatch):
    monkeypatch.setenv(modelcache.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    first = modelcache.trained(NAMES, (), train_counting(calls))
    second = modelcache.trained(NAMES, (), train_counting(calls))
    assert calls == [1]
    text = "connection timed out while talking to the courier"
    assert second.predict(text) == first.predict(text)
    assert oct((tmp_path / "cache").stat().st_mode & 0o777) == "0o700"


def test_training_says_so_before_the_wait_and_a_cached_model_says_nothing(tmp_path, monkeypatch, caplog):
    # a first `failured classify` would otherwise sit silent for the seconds training takes
    monkeypatch.setenv(modelcache.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    with caplog.at_level("INFO", logger="failured.model"):
        modelcache.trained(NAMES, (), lambda: calls.append(len(caplog.records)) or learned_fallback(NAMES, ()))
        assert calls == [1] and "training the classification model" in caplog.records[0].getMessage()
        caplog.clear()
        modelcache.trained(NAMES, (), train_counting(calls))
        assert not caplog.records


def test_other_labels_are_another_model(tmp_path, monkeypatch):
    monkeypatch.setenv(modelcache.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    modelcache.trained(NAMES, (), train_counting(calls))
    modelcache.trained(NAMES, (("unrecoverable_data", None, "bad thing"),), train_counting(calls))
    assert calls == [1, 1]


def test_a_custom_category_nothing_exemplifies_reuses_the_model_and_a_labelled_one_trains(tmp_path, monkeypatch):
    monkeypatch.setenv(modelcache.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    first = modelcache.trained(NAMES, (), train_counting(calls))
    with_custom = NAMES | {"custom_customs_hold"}  # an operator's own category: no corpus example has it
    assert modelcache.trained(with_custom, (), train_counting(calls)).predict("x") == first.predict("x")
    assert calls == [1]
    modelcache.trained(with_custom, (("custom_customs_hold", None, "held at customs"),), train_counting(calls))
    modelcache.trained(NAMES - {"unrecoverable_data"}, (), train_counting(calls))  # a shipped one dropped
    assert calls == [1, 1, 1]


def test_a_damaged_cache_file_means_training_again(tmp_path, monkeypatch):
    monkeypatch.setenv(modelcache.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    modelcache.trained(NAMES, (), train_counting(calls))
    [path] = (tmp_path / "cache").glob("model-*.marshal")
    path.write_bytes(b"\x00garbage")
    assert modelcache.trained(NAMES, (), train_counting(calls)) is not None
    assert calls == [1, 1]


def test_off_always_trains(monkeypatch):
    monkeypatch.setenv(modelcache.CACHE_ENV, "off")
    calls = []
    modelcache.trained(NAMES, (), train_counting(calls))
    modelcache.trained(NAMES, (), train_counting(calls))
    assert calls == [1, 1]


def test_the_model_in_use_is_not_pruned_by_newer_ones(tmp_path, monkeypatch):
    """Pruning keeps the most recently *used* models: a load marks its file as used."""
    monkeypatch.setenv(modelcache.CACHE_ENV, str(tmp_path / "cache"))
    toy = learner.train([("recoverable_network", "socket reset"), ("unrecoverable_data", "bad json")] * 2)
    calls = []

    def train():
        calls.append(1)
        return toy

    modelcache.trained(NAMES, (), train)
    [in_use] = (tmp_path / "cache").glob("model-*.marshal")
    os.utime(in_use, (0, 0))  # written long ago
    for i in range(modelcache.KEEP_FILES):
        modelcache.trained(NAMES, (("unrecoverable_data", None, f"other {i}"),), train)
        modelcache.trained(NAMES, (), train)  # still in use
    assert in_use.exists() and len(calls) == 1 + modelcache.KEEP_FILES

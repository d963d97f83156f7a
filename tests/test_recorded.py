"""A recorded reference (tests/recorded.py) spares the reference only for the very answers it gave."""

import pytest
import recorded

CASES = ["a", "bb", "ccc"]


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setattr(recorded, "RECORDS", tmp_path / "reference-answers.json")
    monkeypatch.setenv(recorded.RECORD_ENV, "1")
    return tmp_path / "reference-answers.json"


def counting(function, calls):
    def counted(case):
        calls.append(case)
        return function(case)
    return counted


def test_a_recorded_reference_is_not_run_again_for_the_same_answers(records):
    calls = []
    recorded.assert_same_answers("lengths", CASES, len, counting(len, calls))
    assert calls == CASES and records.exists()  # no record yet: the reference ran, agreed and was recorded
    assert recorded.assert_same_answers("lengths", CASES, len, counting(len, calls)) == [1, 2, 3]
    assert calls == CASES  # the record vouched for these answers


def test_a_fast_path_that_answers_otherwise_runs_the_reference_and_fails(records):
    recorded.assert_same_answers("lengths", CASES, len, len)
    calls = []
    with pytest.raises(AssertionError, match="1 of 3 cases differ"):
        recorded.assert_same_answers("lengths", CASES, lambda case: len(case) if case != "bb" else 5,
                                     counting(len, calls))
    assert calls == CASES


def test_a_reference_run_without_recording_says_to_refresh(records, monkeypatch):
    monkeypatch.delenv(recorded.RECORD_ENV)
    with pytest.warns(UserWarning, match=r"lengths: the reference ran \(none recorded\): refresh with "):
        recorded.assert_same_answers("lengths", CASES, len, len)
    assert not records.exists()


def test_other_cases_or_a_changed_reference_file_are_not_vouched_for(records, monkeypatch):
    recorded.assert_same_answers("lengths", CASES, len, len)
    calls = []
    recorded.assert_same_answers("lengths", CASES + ["dddd"], len, counting(len, calls))
    assert calls == CASES + ["dddd"]
    recorded.assert_same_answers("lengths", CASES, len, len)  # recorded again for CASES
    monkeypatch.setattr(recorded, "_environment_digest", lambda: "another package, RE2 or Python")
    calls.clear()
    recorded.assert_same_answers("lengths", CASES, len, counting(len, calls))
    assert calls == CASES


def test_floats_are_compared_bit_for_bit(records):
    with pytest.raises(AssertionError, match="1 of 1 cases differ"):
        recorded.assert_same_answers("zero", [0], lambda _: 0.0, lambda _: -0.0)

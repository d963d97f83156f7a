"""Commands that never classify never train the model.

The on-call's ``failured status`` must answer at once even when the model cache is cold: another
user's cache directory, or one an upgrade just made stale. Training takes seconds (a minute on a
busy machine) and only ``run`` and ``classify`` need the model.
"""

import pytest

from conftest import run_cli
from failured.config import load_config
from failured.model import ModelNotLoaded


@pytest.fixture
def env(tmp_path, config_dir):
    return {"FAILURE_DB": str(tmp_path / "data" / "failured.db"), "FAILURE_CONFIG_DIR": str(config_dir),
            "FAILURE_MODEL_CACHE": str(tmp_path / "cache"), "FAILURE_REPORT_DIR": str(tmp_path / "reports")}


def test_commands_that_never_classify_leave_a_cold_model_cache_cold(env, tmp_path):
    assert run_cli("report", "--type", "sync", "--error", "upstream said no", env=env).returncode == 0
    for command in (["status"], ["check-config"], ["list", "--category", "unknown"], ["show", "1"],
                    ["recover", "1"], ["requeue", "--dry-run"], ["label", "1", "unknown"], ["resolve", "1"],
                    ["analyze"], ["scan"]):
        result = run_cli(*command, env=env)
        assert result.returncode in (0, 1), (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr)
    assert not list((tmp_path / "cache").glob("model-*")), "a command that never classifies trained the model"


def test_a_snapshot_loaded_without_its_model_refuses_to_classify_rather_than_answer_without_it(config_dir):
    snapshot = load_config(config_dir, model=False)
    assert isinstance(snapshot.classifier.model, ModelNotLoaded)
    with pytest.raises(RuntimeError, match="loaded without its model"):
        snapshot.classifier.classify("something no rule of this small config knows")


def test_copying_or_asking_after_a_model_not_loaded_is_no_use_of_it():
    import copy

    absent = ModelNotLoaded()
    assert not hasattr(absent, "__deepcopy__")
    assert isinstance(copy.deepcopy(absent), ModelNotLoaded)

"""The command line as a person meets it: --version, help with examples, output into a closed pipe."""

import os
import subprocess
import sys

import pytest

from conftest import run_cli
from failured.cliparser import build_parser
from failured.settings import variables
from failured import __version__


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"failured {__version__}"


def _subparsers():
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def test_every_argument_of_every_subcommand_has_a_description():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, sub in _subparsers().items() for a in sub._actions if not a.help]
    assert missing == []


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_subcommand_help_shows_examples(command, capsys):
    # In this process (the command's own main()): a subprocess each would only add its start-up;
    # test_version and the `run --help` test below run the real command.
    from failured.cli import main

    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    examples = capsys.readouterr().out.split("examples:\n", 1)[1]
    assert examples.lstrip().startswith("failured ") or "failured " in examples.splitlines()[0]


def test_run_help_lists_every_environment_variable_with_its_default():
    text = run_cli("run", "--help").stdout
    for name, default, meaning in variables():
        line = next((line for line in text.splitlines() if line.strip().startswith(name + " ")), None)
        assert line is not None, name
        assert meaning in line and f"(default {default})" in line


def test_readme_environment_table_matches_the_settings():
    readme = (os.path.dirname(__file__) + "/../README.md")
    rows = {}
    for line in open(readme, encoding="utf-8"):
        if line.startswith("| `FAILURE_"):
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1]
    assert rows == {name: default for name, default, _ in variables()}


def _failured(*args, **kwargs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAILURE_")}
    env.update(kwargs.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "failured", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, **kwargs)


def _assert_quiet_exit(proc, status=141):
    stderr = proc.stderr.read().decode()
    assert proc.wait(60) == status, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr and "Exception ignored" not in stderr, stderr


def test_classify_from_stdin_into_a_reader_that_stops_early_exits_quietly(tmp_path, config_dir):
    lines = tmp_path / "errors.txt"
    lines.write_text("connection refused\nmalformed json\n" * 5000)  # far more than a pipe holds
    with open(lines) as stdin:
        proc = _failured("classify", "--json", "-", stdin=stdin, env={"FAILURE_CONFIG_DIR": str(config_dir)})
        assert proc.stdout.readline().startswith(b"{")
        proc.stdout.close()  # as `| head -1` does
        _assert_quiet_exit(proc)


@pytest.mark.parametrize("args, status", [(("classify", "connection refused"), 141), (("status",), 141),
                                          (("--version",), 0)],  # argparse itself drops what a pipe refuses
                         ids=["classify", "status", "version"])
def test_output_into_a_closed_pipe_exits_quietly(tmp_path, config_dir, args, status):
    from failured.store import open_store

    open_store(tmp_path / "failured.db").close()
    proc = _failured(*args, env={"FAILURE_CONFIG_DIR": str(config_dir), "FAILURE_DB": str(tmp_path / "failured.db")})
    proc.stdout.close()  # the reader is gone before anything is written (`| true`)
    _assert_quiet_exit(proc, status)


@pytest.mark.parametrize("args, expected", [
    (("list", "--bogus"), "failured list: error: unrecognized arguments: --bogus (see 'failured list --help')"),
    (("analyze", "--config", "/x"), "failured analyze: error: unrecognized arguments: --config /x"),
    (("exec", "--type", "t", "--timeout", "-5", "--", "true"),
     "failured exec: error: argument --timeout: '-5' must be a number of seconds above 0"),
    (("exec", "--type", "t", "--timeout", "0", "--", "true"), "'0' must be a number of seconds above 0"),
    (("exec", "--type", "t", "--timeout", "nan", "--", "true"), "'nan' must be a number of seconds above 0"),
    (("exec", "--type", "t", "--timeout", "soon", "--", "true"), "'soon' is not a number of seconds"),
    (("exec", "--type", "t", "--timeout", "1e12", "--", "true"),
     "'1e12' is more than 604800 seconds (7 days), the longest a handler may run"),
    # each was an OverflowError or a ValueError's traceback
    (("show", "99999999999999999999999"), "failured show: error: argument id: '99999999999999999999999' is not a "
                                          "task id: ids go from 1 to 9223372036854775807"),
    (("recover", "9223372036854775808"), "is not a task id"),
    (("resolve", "9223372036854775808"), "is not a task id"),
    (("label", "9223372036854775808", "unknown"), "is not a task id"),
    (("analyze", "--days", "99999999999"), "'99999999999' is more than 3660 days (ten years)"),
])
def test_a_usage_error_is_one_line_naming_the_subcommand_and_exit_2(args, expected, capsys):
    from failured.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert expected in error and len(error.strip().splitlines()) == 1, error


def test_a_value_that_begins_with_a_dash_gets_the_way_to_write_it():
    from conftest import run_cli

    refused = run_cli("report", "--type", "t", "--error", "-x")
    assert refused.returncode == 2
    assert "(for a value that begins with '-', write --error=VALUE)" in refused.stderr

"""The ``failured`` command line: every subcommand, its arguments (each described) and examples.

Only the grammar lives here; ``cli.py`` runs the chosen command.
"""

import argparse
import re
import sys
import textwrap

from . import __version__
from .handlers import MAX_HANDLER_TIMEOUT
from .settings import MAX_ANALYSIS_DAYS, variables

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message):
        option = re.match(r"argument (--[\w-]+)(?:/[\w/-]+)?: expected one argument", message)
        if option:  # the value began with "-" ("-bash: x: command not found"), or none was given
            message += f" (for a value that begins with '-', write {option.group(1)}=VALUE)"
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an argument no subcommand knows is that subcommand's error, naming its help."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            subcommand = self._subcommands().get(getattr(parsed, "command", None), self)
            subcommand.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _subcommands(self):
        return next((action.choices for action in self._actions if isinstance(action, argparse._SubParsersAction)),
                    {})


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


MAX_TASK_ID = 2 ** 63 - 1  # the database's largest integer


def task_id(text):
    """A task id: a whole number from 1 to the database's largest (a larger one was an OverflowError)."""
    value = positive_int(text)
    if value > MAX_TASK_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a task id: ids go from 1 to {MAX_TASK_ID}")
    return value


def analysis_days(text):
    value = positive_int(text)
    if value > MAX_ANALYSIS_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_ANALYSIS_DAYS} days (ten years)")
    return value


def positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds above 0")
    return value


def handler_seconds(text):
    """``positive_seconds`` that a handler may run: at most MAX_HANDLER_TIMEOUT (7 days)."""
    value = positive_seconds(text)
    if value > MAX_HANDLER_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_HANDLER_TIMEOUT} seconds (7 days), the "
                                         "longest a handler may run")
    return value


def _examples(*lines):
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _environment_help():
    rows = variables()
    width = max(len(name) for name, _, _ in rows)
    return ("environment (also read from ./.env; the environment wins):\n"
            + "\n".join(f"  {name:<{width}}  {meaning} (default {default})" for name, default, meaning in rows))


JSON_HELP = "print JSON instead of text (for scripts)"


def _add(sub, name, help, examples, description=None):
    # The raw formatter keeps the examples' lines as written; so the description is wrapped here.
    return sub.add_parser(name, help=help, description=textwrap.fill(description or help, 78), epilog=examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _report(sub):
    p = _add(sub, "report", "record a failed task for the daemon", _examples(
        "failured report --type tracking_update --error 'Read timed out' --payload '{\"order_id\": 42}'",
        "failured report --type nightly_sync --error \"$(tail -1 sync.log)\" --json"))
    p.add_argument("--type", required=True, help="task type, e.g. tracking_update (names the handler that retries it)")
    p.add_argument("--error", required=True, help="the error message or traceback")
    p.add_argument("--error-type", help="exception type name, e.g. requests.exceptions.ReadTimeout")
    p.add_argument("--payload", help="JSON object the handler needs to retry the task")
    p.add_argument("--ref", help="your own reference (order id, job id), shown in messages")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _classify(sub):
    p = _add(sub, "classify", "explain how a message is classified (nothing is recorded)", _examples(
        "failured classify 'psycopg2.OperationalError: FATAL: sorry, too many clients already'",
        "failured classify --json - < errors.txt     # one JSON object per input line"))
    p.add_argument("message", help="the error message; '-' reads one message per line from stdin")
    p.add_argument("--error-type", help="exception type name, as a reporter would give it")
    p.add_argument("--type", help="task type, for categories or overrides that depend on it")
    p.add_argument("--config", help="config directory (default: FAILURE_CONFIG_DIR)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _check_config(sub):
    p = _add(sub, "check-config", "validate a config directory (exit 1 listing every problem)", _examples(
        "failured check-config", "failured check-config /etc/failured --json"))
    p.add_argument("dir", nargs="?", help="config directory (default: FAILURE_CONFIG_DIR)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _run(sub):
    _add(sub, "run", "run the daemon in the foreground (until SIGTERM or Ctrl-C)",
         _examples("failured run", "FAILURE_DB=/var/lib/failured/failured.db FAILURE_LOG_LEVEL=DEBUG failured run")
         + "\n\n" + _environment_help(),
         description="Run the daemon: take in failed tasks, classify them, retry what can recover and "
                     "notify people about the rest. It takes no arguments: it is configured by the "
                     "environment below and by the config directory.")


def _exec(sub):
    p = _add(sub, "exec", "run a command; record its failure (or success) for the daemon", _examples(
        "failured exec --type nightly_sync -- /usr/local/bin/sync --full",
        "failured exec --type backup --ref \"$(date +%F)\" -- sh -c 'pg_dump shop > /backup/shop.sql'"),
        description="Run a command with its output passed through. On a non-zero exit record a failure "
                    "(the tail of stderr as the error) that the daemon retries by running the same "
                    "command again; exit with the command's status.")
    p.add_argument("--type", required=True, help="task type to record the failure or success under")
    p.add_argument("--payload", help="JSON object stored with the failure")
    p.add_argument("--ref", help="your own reference (job id, date), shown in messages")
    p.add_argument("--timeout", type=handler_seconds, default=3600.0,
                   help="seconds the daemon lets each retry of the command run (default 3600)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="the command and its arguments, after '--' so its options stay its own")


def _recover(sub):
    p = _add(sub, "recover", "retry one task now", _examples(
        "failured recover 123", "failured recover 123 --force    # even if unrecoverable or out of attempts"))
    p.add_argument("id", type=task_id, help="task id (as printed by report, or in a notification)")
    p.add_argument("--force", action="store_true", help="retry even if unrecoverable or out of attempts")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _requeue(sub):
    p = _add(sub, "requeue", "retry many finished tasks at once", _examples(
        "failured requeue --category unrecoverable_config --since 2h --dry-run",
        "failured requeue --type tracking_update --status manual"))
    p.add_argument("--category", help="only tasks of this category, e.g. unrecoverable_config")
    p.add_argument("--type", help="only tasks of this task type")
    p.add_argument("--status", action="append",
                   help="notified, exhausted, manual or resolved (repeatable; default the first three)")
    p.add_argument("--since", help="only tasks created within this long, e.g. 90s, 30m, 2h, 7d")
    p.add_argument("--dry-run", action="store_true", help="list what would be retried, change nothing")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _resolve(sub):
    p = _add(sub, "resolve", "close a task by hand", _examples(
        "failured resolve 123", "failured resolve 123 --note 'refunded by hand'"))
    p.add_argument("id", type=task_id, help="task id")
    p.add_argument("--note", help="why, kept in the task's history")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _label(sub):
    p = _add(sub, "label", "say which category a task really belongs to; its course follows and the model learns it",
             _examples("failured label 123 unrecoverable_data --note 'the payload was truncated'",
                       "failured label 124 recoverable_network    # it was retried too little: schedule it"))
    p.add_argument("id", type=task_id, help="task id")
    p.add_argument("category", help="the right category name, e.g. recoverable_network (see check-config)")
    p.add_argument("--note", help="why, kept with the label")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _labels(sub):
    p = _add(sub, "labels", "operators' labels: export them in the corpus format", _examples(
        "failured labels export > labels.tsv", "failured labels export --output config/labels.tsv"))
    p.add_argument("action", choices=("export",), help="export: write every label as a tab-separated corpus")
    p.add_argument("--output", help="file to write (default: standard output)")


def _list(sub):
    p = _add(sub, "list", "list tasks, newest first, with filters", _examples(
        "failured list --status notified --since 2h", "failured list --category unknown --grep 'timed out' --json",
        "failured list --limit 100 --cursor 4711    # the page after the one that printed cursor 4711"))
    p.add_argument("--status", action="append", help="only tasks in this status (repeatable)")
    p.add_argument("--category", action="append", help="only tasks of this category (repeatable)")
    p.add_argument("--type", action="append", help="only tasks of this task type (repeatable)")
    p.add_argument("--since", help="only tasks created within this long, e.g. 90s, 30m, 2h, 7d")
    p.add_argument("--grep", help="only tasks whose error text contains this text (literal, case-insensitive ASCII)")
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many tasks (1-500, default 50)")
    p.add_argument("--cursor", help="continue below this task id (the next_cursor a previous page gave)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _show(sub):
    p = _add(sub, "show", "a task and its full history", _examples("failured show 123", "failured show 123 --json"))
    p.add_argument("id", type=task_id, help="task id")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _notify_test(sub):
    p = _add(sub, "notify-test", "send a test message through one channel and print its answer", _examples(
        "failured notify-test ops_dingtalk", "failured notify-test cs_wecom --audience user --json"))
    p.add_argument("channel", help="channel name, a [channels.NAME] table of failured.toml (or 'log')")
    p.add_argument("--audience", choices=("admin", "user"), default="admin",
                   help="who the test message is addressed to (default admin)")
    p.add_argument("--config", help="config directory (default: FAILURE_CONFIG_DIR)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _scan(sub):
    p = _add(sub, "scan", "write a processing report of what was handled since the last one", _examples(
        "failured scan", "failured scan --json | jq .stats"))
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _analyze(sub):
    p = _add(sub, "analyze", "the failure-pattern analysis report", _examples(
        "failured analyze --days 1", "failured analyze --write    # also the JSON and HTML files in FAILURE_REPORT_DIR"))
    p.add_argument("--days", type=analysis_days, help="period in days (default FAILURE_ANALYSIS_DAYS)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--write", action="store_true", help="also write the JSON and HTML report files")


def _status(sub):
    p = _add(sub, "status", "health and figures; exit 1 when unhealthy", _examples(
        "failured status", "failured status || echo 'failured needs attention'"))
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _init(sub):
    p = _add(sub, "init", "write the shipped configuration into a directory, as a starting point", _examples(
        "failured init /etc/failured", "failured init ./config --force    # restore the shipped files"))
    p.add_argument("dir", help="directory to write failured.toml and patterns/ into")
    p.add_argument("--force", action="store_true", help="overwrite the shipped files in a directory that is not empty")


def _migrate_store(sub):
    p = _add(sub, "migrate-store", "copy the SQLite database into an empty PostgreSQL database", _examples(
        "failured migrate-store --to postgresql://failured@db.internal/failured",
        "PGPASSWORD=... failured migrate-store --from /var/lib/failured/failured.db --to postgresql://failured@db/failured"),
        description="Copy every table of the SQLite database (FAILURE_DB, or --from) into an empty PostgreSQL "
                    "database, ids kept, in one transaction; verify the row counts and print the FAILURE_DB "
                    "to set in the daemon's environment. Stop the daemon first: a running one is refused. "
                    "Exit 2 (nothing copied) on a source or target that cannot be used.")
    p.add_argument("--to", required=True, metavar="URL",
                   help="the empty PostgreSQL database to copy into, postgresql://USER@HOST[:PORT]/DB "
                        "(a password is better in PGPASSWORD or ~/.pgpass than on the command line)")
    p.add_argument("--from", dest="source", metavar="PATH", help="the SQLite database to copy (default: FAILURE_DB)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


SUBCOMMANDS = (_report, _exec, _classify, _list, _show, _recover, _requeue, _resolve, _label, _labels, _status, _scan, _analyze,
               _check_config, _notify_test, _init, _migrate_store, _run)


def build_parser():
    parser = Parser(prog="failured", description="Classify, retry and notify failed tasks.",
                    epilog=_examples("failured run", "failured report --type T --error MSG", "failured status",
                                     "failured COMMAND --help"),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"failured {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser

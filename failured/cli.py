"""The ``failured`` command: parse arguments, build settings, call one function, print, exit.

Exit codes: 0 ok, 1 a check failed or the action was refused, 2 bad usage or input,
141 the reader of the output went away (``failured ... | head``), as for a tool SIGPIPE ended.
"""

import contextlib
import json
import math
import os
import signal
import sys
from pathlib import Path

from . import commands, corpus, logmask
from .analysis import headline
from .cliparser import build_parser
from .config import empty_files, ignored_files, load_config, unset_variable_problems
from .classify import error_summary
from .clock import iso
from .errors import ConfigErrors, FailuredError, InputError, StoreFullError
from .manual import parse_duration
from .notify import messages
from .settings import load_settings, misspelt_variables
from .text import printable, quoted, shell_word

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as the shell reports for a tool that SIGPIPE ended


def _print_json(data):
    print(json.dumps(data, ensure_ascii=False, indent=None, default=str))


def cmd_report(args, settings):
    task_id = commands.report(settings, args.type, args.error, error_type=args.error_type,
                              payload=args.payload, ref=args.ref)
    if args.json:
        _print_json({"task_id": task_id, "status": "new"})
    else:
        print(task_id)
    return EXIT_OK


_encode_json = json.JSONEncoder(ensure_ascii=False, default=str).encode  # one encoder, not one per line
_json_string = json.encoder.encode_basestring  # how that encoder writes a str
_CLASSIFICATION_FIELDS = ["category", "label", "action", "matched_by", "pattern", "fingerprint", "template",
                          "error_type", "message", "suggestion", "confidence"]


def _json_line(result):
    """``_encode_json(result.to_dict())`` and a line break, written out field by field: the same text in
    three quarters of the time (tests/test_classify_speed.py compares the two). Anything unusual goes the
    general way."""
    fields = result.__dict__
    confidence, pattern, error_type = result.confidence, result.pattern, result.error_type
    if (list(fields) != _CLASSIFICATION_FIELDS or not all(type(value) is str for value in (
            result.category, result.label, result.action, result.matched_by, result.fingerprint, result.template,
            result.message, result.suggestion, pattern or "", error_type or ""))
            or not (confidence is None or type(confidence) is float and math.isfinite(confidence))):
        return _encode_json(result.to_dict()) + "\n"
    return (f'{{"category": {_json_string(result.category)}, "label": {_json_string(result.label)}, '
            f'"action": {_json_string(result.action)}, "matched_by": {_json_string(result.matched_by)}, '
            f'"pattern": {"null" if pattern is None else _json_string(pattern)}, '
            f'"fingerprint": {_json_string(result.fingerprint)}, "template": {_json_string(result.template)}, '
            f'"error_type": {"null" if error_type is None else _json_string(error_type)}, '
            f'"message": {_json_string(result.message)}, "suggestion": {_json_string(result.suggestion)}, '
            f'"confidence": {"null" if confidence is None else repr(confidence)}}}\n')


def cmd_classify(args, settings):
    snapshot = load_config(args.config or settings.config_dir, settings.lang, settings.log_dir,
                           labels=commands.operators_labels(settings))  # the daemon's answer, labels learned
    classifier = snapshot.classifier
    if args.message == "-":
        write = sys.stdout.write  # block-buffered when piped: one write per line, flushed in large blocks
        for line in sys.stdin.buffer:  # bytes: a line that is not UTF-8 is read with U+FFFD, whatever the locale
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text:
                # one message a line: a multi-line message (a traceback) is written with \n, as the corpus writes it
                result = classifier.classify(corpus.unescaped(text), args.error_type, args.type)
                write(_json_line(result) if args.json else f"{result.category}\t{text}\n")
        return EXIT_OK
    result = classifier.classify(args.message, args.error_type, args.type)
    if args.json:
        _print_json(result.to_dict())
        return EXIT_OK
    matched = result.matched_by
    if result.pattern:  # the model's "pattern" is its confidence, and the rule it overruled: no quotes around it
        matched += f" ({result.pattern})" if result.matched_by == "model" else f" {quoted(result.pattern)}"
    print(f"category:    {result.category} ({result.label})\n"
          f"action:      {result.action}\n"
          f"matched by:  {matched}\n"
          f"error type:  {result.error_type or '-'}\n"
          f"fingerprint: {result.fingerprint}\n"
          f"template:    {result.template}\n"
          f"suggestion:  {result.suggestion or '-'}")
    return EXIT_OK


def cmd_check_config(args, settings):
    config_dir = Path(args.dir or settings.config_dir)
    try:
        snapshot = load_config(config_dir, settings.lang, settings.log_dir, model=False)
        problems = unset_variable_problems(snapshot, config_dir)
        if problems:
            raise ConfigErrors(problems)
    except ConfigErrors as exc:
        if args.json:
            _print_json({"ok": False, "errors": [{"file": e.path, "key": e.key, "reason": e.reason}
                                                 for e in exc.errors]})
        else:
            print(f"{config_dir}: {len(exc.errors)} problem(s)", file=sys.stderr)
            for error in exc.errors:
                print(f"  {error}", file=sys.stderr)
        return EXIT_FAILED
    summary = commands.config_summary(snapshot)
    notes = [*snapshot.ruleset.overrides, *ignored_files(config_dir), *empty_files(snapshot.files)]
    if args.json:
        _print_json({"ok": True, **summary, "notes": notes})
        return EXIT_OK
    print(f"{config_dir}: ok, {len(summary['files'])} files")
    for note in notes:
        print(f"  note: {note}")
    for category in summary["categories"]:
        retry = category["retry"] or "-"
        print(f"  {category['priority']:>5}  {category['name']:<28} {category['action']:<13} "
              f"{category['patterns']:>4} patterns {category['exception_types']:>3} types "
              f"{category['tags']:>2} tags  retry {retry}")
    for name, handler in summary["task_types"].items():
        retry = summary["retry_overrides"].get(name)
        print(f"  task type {name}: handler {handler or '-'}" + (f", retry {retry}" if retry else ""))
    return EXIT_OK


def cmd_init(args, settings):
    from .shipped import write_shipped_config

    try:
        names, edited = write_shipped_config(args.dir, force=args.force)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename and str(exc.filename) != str(args.dir) else ""
        raise InputError(f"cannot write the configuration to {args.dir}: {where}{exc.strerror or exc} "
                         "(give a directory failured may create, or an empty one it can write)") from None
    print(f"wrote the shipped configuration ({len(names)} files) to {args.dir}; "
          f"check it with 'failured check-config {args.dir}'")
    if edited:
        print(f"edited in this checkout, written as committed instead: {', '.join(edited)}")
    return EXIT_OK


def cmd_run(args, settings):
    from .api import check_free, listen_address
    from .daemon import run
    from .store import refuse_if_a_daemon_runs

    refuse_if_a_daemon_runs(settings.db)  # said first: its port is taken too, by that daemon
    check_free(listen_address(settings))  # before anything is created: a bad or taken address leaves nothing behind
    commands.check_config_dir(settings)  # a run in the wrong directory leaves nothing
    commands.check_writable_dirs(settings)
    return run(settings)


def cmd_exec(args, settings):
    from .execwrap import record_outcome, run_command
    from .intake import parse_payload, check_task_type

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise InputError("no command given: failured exec --type T -- CMD ARGS...")
    check_task_type(args.type)
    parse_payload(args.payload)  # refuse bad input before running anything
    status, error, error_type = run_command(argv)  # the job runs, and ends as it ends, whatever failured's state
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a terminal that hung up must not stop its end being recorded
    try:
        task_id = commands.with_store(settings, record_outcome, argv, args.type, status, error, error_type,
                                      payload=args.payload, ref=args.ref, timeout=args.timeout, create=True)
    except FailuredError as exc:
        what = "its success" if status == 0 else "its failure"
        print(f"failured exec: {argv[0]} exited {status}; {what} was NOT recorded: {exc}", file=sys.stderr)
        return status
    if task_id is not None:
        print(f"failured exec: {argv[0]} exited {status}; recorded as task {task_id}", file=sys.stderr)
    return status


def cmd_recover(args, settings):
    task = commands.recover(settings, args.id, args.force)
    _print_json(_task_line(task)) if args.json else print(
        f"task {task.id} {task.task_type}: retry scheduled now (attempt {task.attempts + 1})")
    return EXIT_OK


def cmd_requeue(args, settings):
    since = parse_duration(args.since) if args.since else None
    requeued, skipped = commands.requeue(settings, dry_run=args.dry_run, category=args.category,
                                         task_type=args.type, statuses=args.status, since_seconds=since)
    if args.json:
        _print_json({"dry_run": args.dry_run, "requeued": [_task_line(t) for t in requeued],
                     "skipped": [{**_task_line(t), "reason": why} for t, why in skipped]})
        return EXIT_OK
    verb = "would requeue" if args.dry_run else "requeued"
    for task in requeued:
        print(f"{verb} {task.id}\t{task.task_type}\t{task.status}\t{task.category}\t{messages.shorten(error_summary(task.error_message), 80)}")
    for task, why in skipped:
        print(f"skipped {task.id}\t{task.task_type}: {why}")
    print(f"{len(requeued)} task(s) {verb}, {len(skipped)} skipped")
    return EXIT_OK


def cmd_resolve(args, settings):
    task = commands.resolve(settings, args.id, args.note)
    _print_json(_task_line(task)) if args.json else print(f"task {task.id} resolved")
    return EXIT_OK


def cmd_label(args, settings):
    task = commands.label(settings, args.id, args.category, args.note)
    if args.json:
        _print_json(_task_line(task))
    else:
        print(f"task {task.id} labelled {args.category}: now {task.status}"
              + (f", next retry at {iso(task.next_retry_at)}" if task.next_retry_at else ""))
    return EXIT_OK


def cmd_labels(args, settings):
    lines = commands.export_labels(settings)
    text = "\n".join(lines) + "\n"
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write the labels to {args.output}: {exc.strerror or exc} (give a file in a "
                             "directory that exists and failured may write)") from None
        print(f"{len(lines) - 1} label(s) written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_list(args, settings):
    from .listing import build_filter

    task_filter = build_filter(args.status, args.category, args.type, args.since, args.grep, args.limit, args.cursor)
    rows, cursor = commands.list_tasks(settings, task_filter)
    if args.json:
        _print_json({"tasks": rows, "next_cursor": cursor})
        return EXIT_OK
    for row in rows:
        print(f"{row['id']}\t{iso(row['created_at'])}\t{row['task_type']}\t{row['status']}\t{row['category'] or '-'}"
              f"\t{row['attempts']}\t{messages.shorten(row['error'], 80)}")
    if cursor:
        print(f"more: {_next_page_command(args, cursor)}", file=sys.stderr)
    return EXIT_OK


def _next_page_command(args, cursor):
    """The ``failured list`` that prints the next page: the same filters, quoted for the shell."""
    words = ["failured", "list"]
    for option in ("status", "category", "type"):
        for value in getattr(args, option) or ():
            words += [f"--{option}", value]
    for option in ("since", "grep"):
        if getattr(args, option):
            words += [f"--{option}", getattr(args, option)]
    words += ["--limit", str(args.limit), "--cursor", str(cursor)]
    return " ".join(shell_word(word) for word in words)


SHOWN_PAYLOAD_CHARS = 300  # of a task's payload in ``show``; ``show --json`` gives it whole


def cmd_show(args, settings):
    data = commands.show(settings, args.id)
    if args.json:
        _print_json(data)
        return EXIT_OK
    print(f"task {data['id']} {data['task_type']} ref={data['ref'] or '-'}: {data['status']} "
          f"({data['category'] or 'unclassified'}), {data['attempts']} {'retry' if data['attempts'] == 1 else 'retries'}")
    first = next((e["error"] for e in data["events"] if e["event"] == "reported"), None)
    moved = first is not None and first != data["error_message"]  # a failed retry brought a new error
    print(f"error{' (the latest attempt; the first is on the reported line)' if moved else ''}: "
          f"{data['error_message']}")
    if (data.get("handler") or {}).get("argv"):  # an exec task's own command, credentials masked
        print(f"handler: {' '.join(shell_word(word) for word in data['handler']['argv'])}")
    if data.get("payload"):  # what a retry passes (a Celery task's args and kwargs): one line, --json has it whole
        shown = json.dumps(data["payload"], ensure_ascii=False, default=str)
        print(f"payload: {messages.shorten(shown, SHOWN_PAYLOAD_CHARS)}")
    width = max((len(event["event"]) for event in data["events"]), default=0)
    for event in data["events"]:
        extra = f" attempt {event['attempt']}" if event["attempt"] else ""
        extra += f" in {_seconds(event['delay_seconds'])}s" if event["delay_seconds"] is not None else ""
        said = event["error"] and (event["event"] != "reported" or moved)
        error = f"  {messages.shorten(error_summary(event['error']), 120)}" if said else ""
        print(f"  {iso(event['at'])}  {event['event']:<{width}}  {event['status']:<10}{extra}{error}".rstrip())
    if "advice" in data:
        print(f"why manual: {data['advice']['why']}")
        for step in data["advice"]["what_to_do"]:
            print(f"to do: {step}")
    return EXIT_OK


def _seconds(value):
    """A delay as people read it: whole seconds from 10 s up (293, not 292.974), tenths below."""
    return f"{value:.0f}" if value >= 10 else f"{round(value, 1):g}"


def cmd_notify_test(args, settings):
    from .notify.channels import Message

    snapshot = load_config(args.config or settings.config_dir, settings.lang, settings.log_dir, model=False)
    # Before any channel runs: at DEBUG, urllib3 logs the robot URL with its token.
    logmask.use_secrets(lambda: snapshot.secrets + ((settings.api_token,) if settings.api_token else ()))
    channel = snapshot.channels.get(args.channel)
    if channel is None:
        raise InputError(f"no channel named {args.channel!r}: configured are {', '.join(sorted(snapshot.channels))}")
    _refuse_unset_variables(args.channel, channel)
    title = "[failured] 测试消息 / test message"
    message = Message(title=title, body=f"**{title}**\n\n{channel.describe()}", audience=args.audience,
                      kind="test", record={"test": True})
    result = commands.send_test(settings, channel, message)
    data = {"channel": args.channel, "describe": channel.describe(), "ok": result.ok, "answer": result.answer,
            "error": result.error, "retry_after": result.retry_after, "misconfigured": result.misconfigured}
    if args.json:
        _print_json(data)
    else:
        print(f"{args.channel} ({channel.describe()}): {'sent' if result.ok else 'NOT sent'}")
        for key in ("answer", "error", "retry_after"):
            if data[key]:
                print(f"  {key}: {data[key]}")
        if result.misconfigured:
            print(f"  to fix: {result.advice or 'the channel rejected the message: check its token, key, secret or keyword'}")
    return EXIT_OK if result.ok else EXIT_FAILED


def _refuse_unset_variables(name, channel):
    """A channel whose ``${NAME}``s this shell lacks cannot be tried from here: say so, not that the robot refused."""
    unset = sorted({variable for _, variable in channel.unset_variables()})
    if unset:
        shown = ", ".join(f"${{{variable}}}" for variable in unset)
        raise InputError(f"channel {name!r} uses {shown}, which this shell does not set: notify-test sends from here, "
                         "with this shell's environment. Export it and try again (the systemd unit's variables: "
                         "set -a; . /etc/failured/failured.env; set +a)")


def cmd_scan(args, settings):
    path, report = commands.scan_report(settings)
    if args.json:
        _print_json(report)
    else:
        stats = report["stats"]
        print(f"{path}: {report['total_processed']} processed, {stats['recovered']} recovered, "
              f"{stats['notified']} notified, {len(stats['errors'])} errors")
    return EXIT_OK


def cmd_analyze(args, settings):
    days = args.days or settings.analysis_days
    path, report = commands.analyze(settings, days, write=args.write)
    if args.json:
        _print_json(report)
    else:
        print(headline(report, settings.lang))
        for name, count in report["category_distribution"].items():
            print(f"  {name:<28} {count:>8}")
        for line in report["insights"]:
            print(f"- {line}")
        for template in report["unknown_templates"]:
            print(f"unknown ×{template['count']}: {template['template']}\n  pattern: {_suggested(template)}")
    if path:
        print(f"wrote {path} and {path.with_suffix('.html')}", file=sys.stderr)
    return EXIT_OK


def _suggested(template):
    return template["suggested_pattern"] or ("none suggested (every candidate missed one of its messages or caught "
                                             "another category's): write one by hand, try it with failured classify")


def cmd_status(args, settings):
    from .status import render

    data = commands.status(settings)
    _print_json(data) if args.json else print(render(data))
    return EXIT_OK if data["healthy"] else EXIT_FAILED


def cmd_migrate_store(args, settings):
    def progress(table, rows):
        print(f"copying {table}: {rows} rows", file=sys.stderr)

    result = commands.migrate_store(settings, args.to, args.source, progress)
    setting = f"FAILURE_DB={result.target}"
    if args.json:
        _print_json({"source": result.source, "target": result.target, "tables": result.tables,
                     "late": result.late, "seconds": round(result.seconds, 3), "environment": setting})
    else:
        print(f"copied {result.source} into {result.target} in {result.seconds:.1f} s "
              "(one transaction, row counts verified):")
        for table, copied in result.tables.items():
            print(f"  {table:<16} {copied['rows']:>10}" + ("  (rebuilt)" if copied["how"] == "rebuilt" else ""))
        print("next: give the daemon and every reporter this FAILURE_DB, e.g. in /etc/failured/failured.env\n"
              "(the unit's EnvironmentFile= wins over its Environment= line; the password is shown as ***:\n"
              "write the real one there, or keep it in the service user's ~/.pgpass):\n"
              f"  {setting}\n"
              "then: sudo systemctl restart failured. The SQLite file is left as it was: keep it as a backup.")
    if result.late:
        late = ", ".join(f"{table} {rows:+d}" for table, rows in result.late.items())
        print(f"failured migrate-store: warning: the SQLite database changed during the copy ({late} rows), "
              "written by reporters after the snapshot and not copied: report them again into PostgreSQL, "
              "or empty it and run migrate-store again with the reporters stopped", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _task_line(task):
    return {"task_id": task.id, "task_type": task.task_type, "status": task.status, "category": task.category}


COMMANDS = {
    "report": cmd_report, "exec": cmd_exec, "classify": cmd_classify, "list": cmd_list, "show": cmd_show, "recover": cmd_recover,
    "requeue": cmd_requeue, "resolve": cmd_resolve, "label": cmd_label, "labels": cmd_labels, "status": cmd_status, "scan": cmd_scan,
    "analyze": cmd_analyze, "check-config": cmd_check_config, "notify-test": cmd_notify_test,
    "init": cmd_init, "migrate-store": cmd_migrate_store, "run": cmd_run,
}


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        with _printable_output(args):
            status = _run_command(args)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _closed_pipe()


class _Printable:
    """A text stream that writes control characters as visible escapes (text.printable)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        return self._stream.write(printable(text))

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _printable_output(args):
    """Everything a command prints shows reporters' texts inert, except JSON lines (JSON escapes its
    control characters itself, and ``classify --json -`` writes hundreds of thousands of them)."""
    if getattr(args, "json", False):
        yield
        return
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Printable(stdout), _Printable(stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _closed_pipe():
    """The reader of our output went away (``failured ... | head``): stop quietly, as Unix tools do.

    Exit status 141 (128 + SIGPIPE) is what the shell reports for a tool killed by
    SIGPIPE, so ``set -o pipefail`` scripts see the same as with ``grep`` or ``cat``.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not fail again
    return EXIT_BROKEN_PIPE


def _run_command(args):
    try:
        settings = load_settings()
        for line in misspelt_variables():
            print(f"failured: warning: {line}", file=sys.stderr)
        logmask.setup(settings.log_level)
        return COMMANDS[args.command](args, settings)
    except ConfigErrors as exc:
        print(f"failured {args.command}: configuration error:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_FAILED
    except StoreFullError as exc:
        print(f"failured: {exc}", file=sys.stderr)
        return exc.exit_code
    except FailuredError as exc:
        print(f"failured {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130

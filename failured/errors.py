"""Errors failured raises on purpose: each carries what a person needs to fix it."""


class FailuredError(Exception):
    """Base of every error failured raises on purpose.

    Its ``args`` are what its constructor was given, so ``type(exc)(*exc.args)`` makes it again: pickle does that
    (a prefork worker's child hands a task's exception to its parent so), and Celery rebuilds a task's exception so
    from a JSON result. ``str(exc)`` is its message (``message``, for the errors whose args are not just that).
    """

    exit_code = 1
    message = None

    def __str__(self):
        return self.message if self.message is not None else super().__str__()


class InputError(FailuredError):
    """Bad input from a caller (CLI flag, API argument): nothing was written."""

    exit_code = 2


class ConfigError(FailuredError):
    """A configuration file, key or value that cannot be used.

    ``path`` is the file, ``key`` the dotted key path inside it (or ``None``
    for the whole file), ``reason`` says what is wrong and how to fix it.
    """

    exit_code = 1

    def __init__(self, path, key, reason):
        self.path = str(path)
        self.key = key
        self.reason = reason
        where = f"{self.path}: {key}" if key else self.path
        self.message = f"{where}: {reason}"
        super().__init__(self.path, key, reason)


class ConfigErrors(FailuredError):
    """Several configuration errors found in one validation pass (rebuilt, their messages; or one message)."""

    exit_code = 1

    def __init__(self, errors):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.message = "\n".join(str(e) for e in self.errors)
        super().__init__([str(e) for e in self.errors])  # text: a JSON result holds it


class StoreError(FailuredError):
    """The database cannot be opened or is of a version this failured cannot use."""


class TaskNotFound(InputError):
    """No task has the id that was asked for."""

    def __init__(self, task_id):
        self.task_id = task_id
        self.message = f"task {task_id} not found"
        super().__init__(task_id)


class RefusedError(FailuredError):
    """A manual action refused because of the task's state (the message says why)."""

    exit_code = 1


class StoreFullError(StoreError):
    """The disk (or filesystem) holding the database is full: nothing was written.

    Reporters get a one-line error (CLI exit 1, API 507); the daemon stays up,
    stops taking new work and carries on by itself when space returns.
    """

    def __init__(self, path, detail="database or disk is full"):
        self.path = str(path)
        self.message = f"disk full: cannot write {self.path} ({detail}): free space on its filesystem"
        super().__init__(self.path, detail)


class StoreReadOnlyError(StoreError):
    """The database cannot be written: its file, its directory or its filesystem is read-only; nothing was written.

    ``detail`` says which (or what SQLite said), ``fix`` what to do about it.
    """

    def __init__(self, path, detail, fix="check the permissions of the file and of its directory"):
        self.path = str(path)
        self.message = f"database {self.path} is read-only ({detail}): {fix}"
        super().__init__(self.path, detail, fix)


class UnknownCategory(InputError):
    """A category name the active configuration does not have (a label, a filter)."""

    def __init__(self, name, known):
        self.name = name
        known = list(known)
        self.message = f"no category {name!r}: use one of {', '.join(known)}"
        super().__init__(name, known)


class ConfigNotWritable(FailuredError):
    """The daemon cannot write a file into its config directory (the console's workbench): nothing was saved."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.message = (f"cannot write {self.path}: {reason} — the daemon's user needs write access to the "
                        "config directory, or set FAILURE_CONSOLE_PATTERN_WRITES=false")
        super().__init__(self.path, reason)

"""Errors failured raises on purpose: each carries what a person needs to fix it."""


class FailuredError(Exception):
    """Base of every error failured raises on purpose."""

    exit_code = 1


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
        super().__init__(f"{where}: {reason}")


class ConfigErrors(FailuredError):
    """Several configuration errors found in one validation pass."""

    exit_code = 1

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class StoreError(FailuredError):
    """The database cannot be opened or is of a version this failured cannot use."""


class TaskNotFound(InputError):
    """No task has the id that was asked for."""

    def __init__(self, task_id):
        self.task_id = task_id
        super().__init__(f"task {task_id} not found")


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
        super().__init__(f"disk full: cannot write {self.path} ({detail}): free space on its filesystem")


class StoreReadOnlyError(StoreError):
    """The database cannot be written: its file, its directory or its filesystem is read-only; nothing was written.

    ``detail`` says which (or what SQLite said), ``fix`` what to do about it.
    """

    def __init__(self, path, detail, fix="check the permissions of the file and of its directory"):
        self.path = str(path)
        super().__init__(f"database {self.path} is read-only ({detail}): {fix}")


class UnknownCategory(InputError):
    """A category name the active configuration does not have (a label, a filter)."""

    def __init__(self, name, known):
        self.name = name
        super().__init__(f"no category {name!r}: use one of {', '.join(known)}")


class ConfigNotWritable(FailuredError):
    """The daemon cannot write a file into its config directory (the console's workbench): nothing was saved."""

    def __init__(self, path, reason):
        self.path = str(path)
        super().__init__(f"cannot write {self.path}: {reason} — the daemon's user needs write access to the "
                         "config directory, or set FAILURE_CONSOLE_PATTERN_WRITES=false")

"""The configuration failured ships, as installed or in a checkout — never the local files beside it.

An install (``pip install``) copies the shipped files to ``share/failured/config``
and lists each one in the package's record; that list is the truth. In a git
checkout (an editable install) the shipped files are the ones git tracks under
``config/``: a local override such as ``config/patterns/50-local.toml`` is not
shipped, so ``failured init`` does not copy it; a shipped file edited in place is written as committed.
"""

import importlib.metadata
import shutil
import subprocess
from pathlib import Path

from .errors import FailuredError, InputError

INSTALLED_PREFIX = ("share", "failured", "config")
CHECKOUT = Path(__file__).resolve().parent.parent


def shipped_config_files():
    """{name relative to the config directory: path of the shipped copy}, sorted by name."""
    files = _installed_files() or _checkout_files()
    if not files or "failured.toml" not in files:
        raise FailuredError("the shipped configuration is not installed: reinstall failured")
    return dict(sorted(files.items()))


def _installed_files():
    try:
        distribution = importlib.metadata.distribution("failured")
    except importlib.metadata.PackageNotFoundError:
        return {}
    found = {}
    for entry in distribution.files or ():
        parts = Path(entry).parts
        for start in range(len(parts) - len(INSTALLED_PREFIX)):
            if parts[start:start + len(INSTALLED_PREFIX)] == INSTALLED_PREFIX:
                path = Path(distribution.locate_file(entry)).resolve()
                if path.is_file():
                    found["/".join(parts[start + len(INSTALLED_PREFIX):])] = path
                break
    return found


def _checkout_files():
    source = CHECKOUT / "config"
    if not (CHECKOUT / ".git").exists() or not source.is_dir():
        return {}
    listed = _git("ls-files", "-z", "--", "config")
    if listed is None:
        # No git to ask: the files a build would ship (the setup.cfg data_files patterns).
        names = [p for p in source.rglob("*.toml")]
    else:
        names = [CHECKOUT / name for name in listed.decode("utf-8", "replace").split("\0") if name]
    return {str(p.relative_to(source)): p for p in names if p.is_file()}


def write_shipped_config(target, force=False):
    """Copy the shipped configuration into ``target``; returns (the names written, those of them a checkout had
    edited, whose committed text was written instead of the edit).

    A directory that is not empty is refused unless ``force`` (then only the shipped
    files are overwritten; local files beside them stay).
    """
    target = Path(target)
    files = shipped_config_files()
    committed = _committed_texts_of_edits(files)
    if target.exists() and any(target.iterdir()) and not force:
        raise ExistingConfigError(target)
    if any(_same_file(source, target / name) for name, source in files.items()):
        raise InputError(f"{target} is the shipped configuration itself (this checkout's config/): there is no "
                         "other copy to restore it from; git restores its files (git checkout -- config/)")
    for name, source in files.items():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if name in committed:
            destination.write_bytes(committed[name])
        else:
            shutil.copyfile(source, destination)
    return list(files), sorted(committed)


def _committed_texts_of_edits(files):
    """{name: committed bytes} of a checkout's shipped files edited since its last commit. The Quick start runs
    the daemon on the checkout's own config/, so its channels and handlers are the operator's, not shipped."""
    source = CHECKOUT / "config"
    if not all(path.is_relative_to(source) for path in files.values()):
        return {}  # an install's copies, never edited by the daemon's operator
    edited = _git("diff", "--name-only", "-z", "HEAD", "--", "config")
    found = {}
    for path in (edited or b"").decode("utf-8", "replace").split("\0"):
        name = path.removeprefix("config/")
        if name in files:
            text = _git("show", f"HEAD:{path}")
            if text is not None:
                found[name] = text
    return found


def _git(*arguments):
    """git's output in the checkout, or None where git cannot answer."""
    try:
        done = subprocess.run(["git", "-C", str(CHECKOUT), *arguments], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _same_file(source, destination):
    try:
        return destination.samefile(source)
    except OSError:  # not there yet
        return False


class ExistingConfigError(FailuredError):
    """``failured init`` into a directory that already holds files."""

    exit_code = 2

    def __init__(self, target):
        super().__init__(f"{target} is not empty: pass --force to overwrite the shipped files in it")

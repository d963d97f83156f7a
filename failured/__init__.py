"""failured: classify failed tasks, retry what can recover, tell people about the rest."""

__all__ = ["report_failure", "report_success"]
__version__ = "0.27.0"  # raised with every release: pip upgrades only to a version it has not installed


def __getattr__(name):
    # The reporting functions load the store (peewee); importing them on first use spares every
    # `failured` command and Celery worker that never reports through them the start-up cost.
    if name in __all__:
        from . import intake

        return getattr(intake, name)
    raise AttributeError(f"module 'failured' has no attribute {name!r}")

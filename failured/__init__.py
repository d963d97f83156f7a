"""failured: classify failed tasks, retry what can recover, tell people about the rest."""

from .intake import report_failure, report_success

__all__ = ["report_failure", "report_success"]
__version__ = "0.1.0"

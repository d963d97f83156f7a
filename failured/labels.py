"""Operators' labels: correct one task's category (its course follows), export them all as a corpus.

A label is kept with the error text it was given for, so it keeps teaching the
model after housekeeping purges the task; the export is the corpus format the
shipped examples use, to review, keep in version control or share.
"""

from .corpus import COLUMNS, format_row

EXPORT_SOURCE = "operator-label"


def export_lines(store):
    """The corpus file's lines (header first) for every label, oldest first."""
    lines = ["\t".join(COLUMNS)]
    for label in store.labels():
        source = f"{EXPORT_SOURCE}:task-{label['task']}" if label["task"] else EXPORT_SOURCE
        lines.append(format_row(label["category"], label["error_type"], source, label["message"]))
    return lines

"""``stream-logreg report``: draw the learning curve of a ``demo --curve`` run as a PNG.

:func:`read_curve` reads the CSV, :func:`plot_curve` draws it (matplotlib, Agg canvas, no pyplot state; the
``report`` extra).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from consumers.errors import EXIT_OK, PROG, CommandError
from consumers.settings import at_least

__all__ = ["cmd_report", "plot_curve", "read_curve"]


def read_curve(path: str | os.PathLike) -> dict[str, list[float]]:
    """The columns of a learning-curve CSV written by ``demo --curve`` (each as a list of floats)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("event", "log_loss", "accuracy") if c not in header]
            if missing:
                raise CommandError(
                    f"{path} is not a learning curve from `{PROG} demo --curve`: missing columns {missing} "
                    f"(it has {header})"
                )
            columns: dict[str, list[float]] = {name: [] for name in header}
            for lineno, row in enumerate(reader, 2):
                try:
                    for name in header:
                        columns[name].append(float(row[name]))
                except (TypeError, ValueError):
                    raise CommandError(f"{path}, line {lineno}: not a number in {row}") from None
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    if not columns["event"]:
        raise CommandError(f"{path} has no rows")
    return columns


def plot_curve(curve: Mapping[str, Sequence[float]], title: str) -> Any:
    """A matplotlib ``Figure`` (Agg canvas, no pyplot state): log loss above, accuracy below, vs events."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(2, 1, sharex=True)
    events = curve["event"]
    ax_loss.plot(events, curve["log_loss"], label="progressive", color="C0")
    if curve.get("rolling_log_loss"):
        ax_loss.plot(events, curve["rolling_log_loss"], label="rolling", color="C1", alpha=0.7)
    ax_loss.set_ylabel("log loss")
    ax_loss.set_title("progressive validation log loss (predict, then learn)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="upper right")
    ax_acc.plot(events, curve["accuracy"], label="progressive", color="C0")
    if curve.get("rolling_accuracy"):
        ax_acc.plot(events, curve["rolling_accuracy"], label="rolling", color="C1", alpha=0.7)
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_xlabel("events")
    ax_acc.set_title("progressive validation accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    fig.suptitle(title)
    return fig


def cmd_report(args: argparse.Namespace) -> int:
    """Read ``args.run``, draw it and write the PNG ``args.output``."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("report needs matplotlib: pip install 'stream-logreg[report]'") from None
    at_least("--dpi", args.dpi, 10)
    curve = read_curve(args.run)
    title = args.title or f"Learning curve of {Path(args.run).name} ({len(curve['event']):,} events)"
    fig = plot_curve(curve, title)
    try:
        fig.savefig(args.output, format="png", dpi=args.dpi)
    except OSError as exc:
        raise CommandError(f"cannot write -o {args.output}: {exc}") from None
    print(f"wrote {args.output}", file=sys.stdout)
    return EXIT_OK

"""``stream-logreg report``: draw the learning curve of a ``demo --curve`` run as an image (PNG, JPEG, SVG
or PDF, by the suffix of ``-o``; any other suffix is refused, exit 2).

:func:`read_curve` reads the CSV (``#`` lines are notes: the first says what was run and titles the plot,
later ones mark where a run resumed), :func:`plot_curve` draws it (matplotlib, Agg canvas, no pyplot state;
the ``report`` extra).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from consumers.errors import EXIT_OK, PROG, CommandError, UsageError
from consumers.settings import at_least

__all__ = ["FORMATS", "cmd_report", "curve_title", "plot_curve", "read_curve"]


def read_curve(
    path: str | os.PathLike, allow_empty: bool = False
) -> tuple[dict[str, list[float]], list[str]]:
    """The columns of a learning-curve CSV written by ``demo --curve`` (each as a list of floats) and its
    notes (the ``#`` lines: what was run, where a run resumed), in file order."""
    columns: dict[str, list[float]] = {}
    notes: list[str] = []
    header: list[str] | None = None
    try:
        with open(path, newline="") as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("#"):
                    notes.append(line[1:].strip())
                    continue
                if not line.strip():
                    continue
                (row,) = csv.reader([line])
                if header is None:
                    header = row
                    missing = [c for c in ("event", "log_loss", "accuracy") if c not in header]
                    if missing:
                        raise CommandError(
                            f"{path} is not a learning curve from `{PROG} demo --curve`: missing columns "
                            f"{missing} (it has {header})"
                        )
                    columns = {name: [] for name in header}
                    continue
                try:
                    if len(row) != len(header):
                        raise ValueError
                    values = [float(v) for v in row]
                except ValueError:
                    raise CommandError(f"{path}, line {lineno}: not {len(header)} numbers: {row}") from None
                for name, value in zip(header, values, strict=True):
                    columns[name].append(value)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not a learning curve from `{PROG} demo --curve`: not text") from None
    if header is None:
        raise CommandError(f"{path} is not a learning curve from `{PROG} demo --curve`: no header")
    if not columns["event"] and not allow_empty:
        raise CommandError(f"{path} has no rows")
    return columns, notes


#: The file formats ``report -o`` writes, by file name suffix (matplotlib's names).
FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg", ".pdf": "pdf"}


def curve_title(notes: Sequence[str], curve: Mapping[str, Sequence[float]], name: str) -> str:
    """What was run (the curve's first note, written by ``demo``), else the file name; and its events."""
    events = curve["event"]
    span = (f"events {int(events[0]):,} to {int(events[-1]):,}" if events[0] != 1
            else f"{len(events):,} events")
    what = notes[0].removeprefix(f"{PROG} demo --dataset ") if notes else name
    resumed = sum(1 for note in notes if note.startswith("resumed"))
    return f"{what}\n{span}" + (f" (resumed {resumed} time{'s' if resumed != 1 else ''})" if resumed else "")


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
    """Read ``args.run``, draw it and write ``args.output`` in the format its suffix names."""
    suffix = Path(args.output).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(
            f"-o {args.output}: unknown image format {suffix or '(no suffix)'!r}; name the file "
            + ", ".join(f"*{s}" for s in FORMATS)
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("report needs matplotlib: pip install 'stream-logreg[report]'") from None
    at_least("--dpi", args.dpi, 10)
    curve, notes = read_curve(args.run)
    title = args.title or curve_title(notes, curve, Path(args.run).name)
    fig = plot_curve(curve, title)
    try:
        fig.savefig(args.output, format=FORMATS[suffix], dpi=args.dpi)
    except OSError as exc:
        raise CommandError(f"cannot write -o {args.output}: {exc}") from None
    print(f"wrote {args.output}", file=sys.stdout)
    return EXIT_OK

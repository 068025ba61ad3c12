"""``stream-logreg demo``: learn a built-in dataset with progressive validation, checkpointing; and the
built-in datasets themselves (also the sources of ``replay``).

The datasets need no network: River's bundled files (Phishing, Bananas) and synthetic generators (SEA with a
concept drift, a rotating hyperplane).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from consumers.errors import EXIT_INTERRUPTED, EXIT_OK, PROG, CommandError, UsageError, mismatch_text
from consumers.settings import MODEL_SETTINGS, at_least, build_model, resolve_settings
from consumers.stats import progressive_metrics
from consumers.terminal import Progress, bar, graceful_interrupt

__all__ = ["CURVE_COLUMNS", "DATASETS", "SYNTHETIC_DEFAULT_N", "cmd_demo", "dataset_help", "dataset_stream",
           "setup_text", "validate_demo"]

#: The columns of the learning curve that ``demo --curve`` writes (and ``report`` draws).
CURVE_COLUMNS = ("event", "y", "p", "log_loss", "accuracy", "rolling_log_loss", "rolling_accuracy")


# ----------------------------------------------------------------------------------------------------------
# Datasets (no network: River's bundled files and synthetic generators)


@dataclasses.dataclass(frozen=True)
class _Dataset:
    """A built-in dataset: what it is, how many events (``None``: synthetic, endless), its stream by seed."""

    description: str
    size: int | None  # None: synthetic, endless
    make: Callable[[int], Iterable[tuple[dict, Any]]]


def _phishing(seed: int) -> Iterable[tuple[dict, Any]]:
    from river import datasets

    return datasets.Phishing()


def _bananas(seed: int) -> Iterable[tuple[dict, Any]]:
    from river import datasets

    return datasets.Bananas()


def _sea(seed: int) -> Iterable[tuple[dict, Any]]:
    from river.datasets import synth

    return synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, noise=0.05, seed=seed),
        drift_stream=synth.SEA(variant=3, noise=0.05, seed=seed + 1),
        position=5000, width=1000, seed=seed,
    )


def _hyperplane(seed: int) -> Iterable[tuple[dict, Any]]:
    from river.datasets import synth

    return synth.Hyperplane(seed=seed, n_features=10, n_drift_features=2, mag_change=0.001,
                            noise_percentage=0.05)


DATASETS: dict[str, _Dataset] = {
    "phishing": _Dataset("River's Phishing websites: 1,250 events, 9 features (bundled)", 1250, _phishing),
    "bananas": _Dataset("River's Bananas: 5,300 events, 2 features, not linearly separable (bundled)", 5300,
                        _bananas),
    "sea": _Dataset("SEA concepts (synthetic): 3 features, 5% noise, the concept drifts around event "
                    "5,000", None, _sea),
    "hyperplane": _Dataset("rotating hyperplane (synthetic): 10 features, 2 of them drifting, 5% noise",
                           None, _hyperplane),
}
SYNTHETIC_DEFAULT_N = 10_000


def dataset_stream(name: str, n: int | None, seed: int) -> tuple[Iterable[tuple[dict, Any]], int]:
    """The (x, y) pairs of a built-in dataset and how many of them to use."""
    spec = DATASETS[name]
    if n is None:
        n = spec.size if spec.size is not None else SYNTHETIC_DEFAULT_N
    elif spec.size is not None and n > spec.size:
        raise UsageError(f"--n {n} is larger than the {name} dataset ({spec.size} events)")
    return spec.make(seed), n


def dataset_help() -> str:
    """The datasets and their descriptions, one a line (for ``--help``)."""
    return "\n".join(f"  {name:<11} {spec.description}" for name, spec in DATASETS.items())


# ----------------------------------------------------------------------------------------------------------
# demo


def setup_text(model: Any, batch_size: int) -> str:
    """What the model is, in the words of its options: ``ftrl(alpha=0.17, ...), batch size 1``."""
    opt = dict(model.config()["optimizer"])
    name = opt.pop("name")
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in opt.items()) + f"), batch size {batch_size}"


class _Curve:
    """The learning curve of ``demo --curve``: a CSV with ``#`` note lines (what was run, where a run
    resumed). A run from event 1 writes the file anew; a resumed run appends to the curve of the same run
    (same description: dataset, options, window) that ends where it resumes (its rolling window refilled
    from the file's last rows), starts a new file if there is none, and refuses any other file (it would
    mix two runs)."""

    def __init__(self, path: str, note: str, window: int, position: int, resumed_from: str | None) -> None:
        self.path = path
        self.window: deque[tuple[float, int]] = deque(maxlen=window)
        self.rolling = [0.0, 0]
        append = resumed_from is not None and _has_rows_or_header(path)
        if append:
            from consumers.report import read_curve

            columns, notes = read_curve(path, allow_empty=True)
            if notes[:1] != [note]:
                raise UsageError(
                    f"--curve {path} is the curve of another run ({notes[0] if notes else 'no description'}; "
                    f"this run: {note}): name another --curve file, or start over with --fresh"
                )
            last = int(columns["event"][-1]) if columns["event"] else 0
            if last != position:
                raise UsageError(
                    f"--curve {path} ends at event {last:,}, but this run resumes at event {position:,} "
                    f"(checkpoint {resumed_from}): name another --curve file, or start over with --fresh"
                )
            tail = max(0, len(columns["event"]) - window)
            for p, y in zip(columns["p"][tail:], columns["y"][tail:], strict=True):
                self._push(p, int(y))
        try:
            self.file = open(path, "a" if append else "w", newline="")  # closed by close()
        except OSError as exc:
            raise CommandError(f"cannot write --curve {path}: {exc}") from None
        self.writer = csv.writer(self.file)
        if not append:
            self.file.write(f"# {note}\n")
            self.writer.writerow(CURVE_COLUMNS)
        if resumed_from is not None:
            self.file.write(f"# resumed at event {position:,} from checkpoint {resumed_from}\n")

    def _push(self, p: float, y: int) -> tuple[float, int]:
        loss, hit = progressive_metrics([p], [y])
        if len(self.window) == self.window.maxlen:
            old_loss, old_hit = self.window[0]
            self.rolling[0] -= old_loss
            self.rolling[1] -= old_hit
        self.window.append((loss, hit))
        self.rolling[0] += loss
        self.rolling[1] += hit
        return loss, hit

    def row(self, event: int, p: float, y: int, totals: dict[str, Any]) -> None:
        """Add the prediction ``p`` of event number ``event`` (labelled ``y``) to ``totals`` and write its
        row."""
        loss, hit = self._push(p, y)
        totals["n"] += 1
        totals["log_loss_sum"] += loss
        totals["correct"] += hit
        k, n = totals["n"], len(self.window)
        self.writer.writerow((
            event, y, repr(p), repr(totals["log_loss_sum"] / k), repr(totals["correct"] / k),
            repr(self.rolling[0] / n), repr(self.rolling[1] / n),
        ))

    def close(self) -> None:
        self.file.close()


def _has_rows_or_header(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def cmd_demo(args: argparse.Namespace) -> int:
    """Stream a built-in dataset through the model (predict, then learn), checkpointing; resume if asked."""
    from stream_logreg.checkpoints import CheckpointError, CheckpointMismatch, DirectoryStore

    model_values, _ = resolve_settings(args, MODEL_SETTINGS, None)
    model = build_model(model_values)
    batch_size = model_values["batch_size"]
    stream, n = dataset_stream(args.dataset, args.n, args.seed)
    if getattr(args, "delayed_labels", False):
        return delayed_demo(model, stream, n, args)
    synthetic = DATASETS[args.dataset].size is None
    identity = {"dataset": args.dataset, "seed": args.seed if synthetic else None, "batch_size": batch_size}

    try:
        store = DirectoryStore(args.checkpoint_dir, keep=args.keep)
    except OSError as exc:
        raise CommandError(f"cannot use --checkpoint-dir {args.checkpoint_dir}: {exc}") from None
    position, totals, resumed_from = 0, {"n": 0, "log_loss_sum": 0.0, "correct": 0}, None
    if not args.fresh:
        try:
            checkpoint = store.latest(expect_config=model.config())
        except CheckpointMismatch as exc:
            raise UsageError(
                f"the latest checkpoint in --checkpoint-dir {args.checkpoint_dir} has other model options "
                f"({mismatch_text(exc)}): use the same options, another --checkpoint-dir, or --fresh"
            ) from None
        except CheckpointError as exc:
            raise CommandError(f"cannot resume from {args.checkpoint_dir}: {exc}") from None
        if checkpoint is not None:
            meta = checkpoint.metadata
            theirs = {k: meta.get(k) for k in identity}
            if theirs != identity or not isinstance(meta.get("position"), int):
                raise UsageError(
                    f"the latest checkpoint in --checkpoint-dir {args.checkpoint_dir} ({checkpoint.id}) is "
                    f"of another run ({theirs}, this run: {identity}): use another --checkpoint-dir, or "
                    "--fresh"
                )
            model, position, resumed_from = checkpoint.model, meta["position"], checkpoint.id
            totals.update(meta.get("progressive") or {})
            print(
                f"resumed from checkpoint {checkpoint.id} in {args.checkpoint_dir}: skipping the "
                f"{position:,} events it covers",
                file=sys.stderr,
            )

    def save() -> str:
        settle()
        try:
            return store.save(model, {**identity, "position": position, "progressive": dict(totals)})
        except (CheckpointError, OSError) as exc:
            raise CommandError(f"cannot write a checkpoint to {args.checkpoint_dir}: {exc}") from None

    curve = None
    if args.curve is not None:
        note = (f"{PROG} demo --dataset {args.dataset}" + (f" --seed {args.seed}" if synthetic else "")
                + f": {setup_text(model, batch_size)}, rolling window {args.window}")
        curve = _Curve(args.curve, note, args.window, position, resumed_from)

    progress = Progress(sys.stderr, enabled=not args.quiet)
    pending: tuple[list[float], list[int]] = ([], [])  # predictions not yet in the totals
    learned = 0
    last_saved = position if resumed_from is not None else -1
    checkpoint_id = resumed_from
    interrupted = False
    start = time.monotonic()

    def settle() -> None:
        """Add the pending predictions to the totals (the consumer's definition, one numpy call)."""
        if pending[0]:
            loss, hits = progressive_metrics(*pending)
            totals["n"] += len(pending[0])
            totals["log_loss_sum"] += loss
            totals["correct"] += hits
            pending[0].clear()
            pending[1].clear()

    def status() -> str:
        settle()
        k = max(totals["n"], 1)
        return (
            f"demo {args.dataset}  {bar(position, n)} events  {progress.rate(learned):,.0f} ev/s  "
            f"log loss {totals['log_loss_sum'] / k:.4f}  accuracy {totals['correct'] / k:.2%}"
        )

    try:
        with graceful_interrupt() as stop_requested:
            events = itertools.islice(stream, position, n) if position < n else iter(())
            while True:
                batch = list(itertools.islice(events, batch_size))
                if not batch:
                    break
                for i, (x, y) in enumerate(batch):
                    p = model.predict_proba_one(x)[True]
                    if curve is not None:
                        curve.row(position + i + 1, p, int(bool(y)), totals)
                    else:
                        pending[0].append(p)
                        pending[1].append(int(bool(y)))
                if batch_size == 1:
                    model.learn_one(*batch[0])
                else:
                    model.learn_rows([x for x, _ in batch], [y for _, y in batch])
                position += len(batch)
                learned += len(batch)
                if len(pending[0]) >= 4096:
                    settle()
                if position // args.checkpoint_every > max(last_saved, 0) // args.checkpoint_every:
                    checkpoint_id, last_saved = save(), position
                if progress.due():
                    progress.show(status())
                if stop_requested():
                    interrupted = True
                    break
        if last_saved != position:
            checkpoint_id, last_saved = save(), position
    finally:
        if curve is not None:
            curve.close()
    elapsed = time.monotonic() - start
    settle()
    progress.show(status(), final=True)

    k = max(totals["n"], 1)
    out = sys.stdout
    print(f"dataset               {args.dataset} ({DATASETS[args.dataset].description})", file=out)
    if resumed_from is not None:
        print(f"resumed from          checkpoint {resumed_from} (event {position - learned:,} of {n:,})",
              file=out)
    if learned:
        print(f"events                {position:,} of {n:,} ({learned:,} learned in this run"
              f"{', interrupted' if interrupted else ''})", file=out)
        print(f"throughput            {learned / elapsed if elapsed > 0 else 0.0:,.0f} events/s", file=out)
    else:
        print(f"events                {position:,} of {n:,} (nothing left to learn: the checkpoint covers "
              "them all)", file=out)
    scaling = "standardized inside the model (--scale)" if model.scale else "raw (no scaling)"
    print(f"model                 {setup_text(model, batch_size)}, features {scaling}", file=out)
    print(f"progressive log loss  {totals['log_loss_sum'] / k:.4f}", file=out)
    print(f"progressive accuracy  {totals['correct'] / k:.2%} ({totals['correct']:,} of {totals['n']:,} "
          "predicted right before learning)", file=out)
    print(f"samples seen          {model.n_samples_seen:,}", file=out)
    print(f"checkpoint            {checkpoint_id} in {args.checkpoint_dir}", file=out)
    if args.curve is not None:
        print(f"learning curve        {args.curve} (draw it: {PROG} report {args.curve} -o curve.png)",
              file=out)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def delayed_demo(model: Any, stream: Iterable[tuple[dict, Any]], n: int, args: argparse.Namespace) -> int:
    """``demo --delayed-labels``: the join of ``consume --labels-topic`` on a built-in stream.

    Event ``i`` arrives at second ``i`` and is scored at once; its label arrives an exponential, seeded delay
    (mean ``--label-delay`` seconds) later. Both feed a :class:`~consumers.state.join_store.JoinStore` in
    time order, as the learner feeds it records; a joined event is learned then, and its prediction made
    at scoring time is judged (the delayed progressive metrics). For comparison, the same model learning
    each label at once (the immediate progressive metrics) runs beside it.
    """
    import heapq
    import random

    from consumers.state.join_store import JoinStore

    for flag, value in (("--label-delay", args.label_delay), ("--label-ttl", args.label_ttl)):
        if not (value > 0 and value < 1e12):
            raise UsageError(f"{flag} must be a number of seconds > 0, got {value!r}")
    rng = random.Random(args.seed)
    store = JoinStore(max_pending=1_000_000, label_ttl_ms=int(args.label_ttl * 1000),
                      expired_policy=args.expired_policy)
    immediate = model.clone()
    labels: list[tuple[int, int, str, int]] = []  # (arrival ms, event number, id, y): a heap
    delayed = ([], [])
    now_ps, now_ys = [], []
    learned = 0

    def feed_labels(until: int) -> None:
        nonlocal learned
        while labels and labels[0][0] <= until:
            ts, _, id_, y = heapq.heappop(labels)
            for j in store.add_label(id_, y, ts=ts):
                learn(j)

    def learn(j: Any) -> None:
        nonlocal learned
        model.learn_one(j.x, j.y)
        learned += 1
        if j.cause == "label":
            delayed[0].append(j.p)
            delayed[1].append(j.y)

    start = time.monotonic()
    for i, (x, y) in enumerate(itertools.islice(stream, n)):
        ts = i * 1000
        feed_labels(ts)
        y = int(bool(y))
        now_ps.append(immediate.predict_proba_one(x)[True])
        now_ys.append(y)
        immediate.learn_one(x, y)
        p = model.predict_proba_one(x)[True]
        for j in store.add_event(f"e{i}", dict(x), p, version=model.n_samples_seen, ts=ts):
            learn(j)
        delay = int(rng.expovariate(1.0 / args.label_delay) * 1000)
        heapq.heappush(labels, (ts + delay, i, f"e{i}", y))
    feed_labels(2**62)
    elapsed = time.monotonic() - start
    c = store.counters
    out = sys.stdout
    print(f"dataset               {args.dataset} ({DATASETS[args.dataset].description})", file=out)
    print(f"events                {n:,}, one a second; labels after {args.label_delay:g} s on average "
          f"(exponential, seed {args.seed}), waiting at most {args.label_ttl:g} s", file=out)
    print(f"joined                {c['joined']:,} learned when their label came ({learned:,} learned in all, "
          f"{elapsed:.1f} s)", file=out)
    print(f"expired               {c['expired_events']:,} events without a label in time "
          f"({args.expired_policy}), {c['orphan_labels']:,} labels too late", file=out)
    print(f"still waiting         {c['pending_events']:,} events, {c['pending_labels']:,} labels", file=out)
    for name, (ps, ys) in (("delayed", delayed), ("immediate", (now_ps, now_ys))):
        k = max(len(ps), 1)
        loss, hits = progressive_metrics(ps, ys) if ps else (0.0, 0)
        print(f"{name + ' log loss':<22}{loss / k:.4f}  accuracy {hits / k:.2%} ({len(ps):,} judged)",
              file=out)
    print("(delayed: each prediction made when its event arrived, judged when its label came; immediate: "
          "the same model learning each label at once)", file=out)
    return EXIT_OK


def validate_demo(args: argparse.Namespace) -> None:
    """Refuse ``demo``'s counts below 1 (before logging is set up)."""
    for flag, value in (("--n", args.n), ("--checkpoint-every", args.checkpoint_every), ("--keep", args.keep),
                        ("--window", args.window)):
        at_least(flag, value, 1)

"""How long checkpoints take: save and load of FTRL models with 10^3, 10^5 and 10^6 weights.

Each model is FTRL (so the optimizer's z and n are saved with w: three float64 arrays of n entries) with
every weight non-zero. Models:

- ``vocab 1e3`` / ``vocab 1e5`` / ``vocab 1e6``: a vocabulary of n features (``learn_batch`` on an array of n
  columns); the manifest then lists n feature keys as JSON;
- ``hash 2^20``: ``n_bits=20`` (1,048,576 weights, no vocabulary to write).

For each, the median of ``--repeats`` runs of:

- ``save``: ``DirectoryStore.save`` as the consumer calls it (``model.state()``, the .npz, sha256, manifest,
  fsync of both files and of the directory, retention), and the same without the fsyncs (``fsync=False``:
  the difference is what durability costs on this disk);
- ``state``: ``model.state()`` alone (the model's share of ``save``);
- ``load``: ``DirectoryStore.latest`` (read, verify both checksums, ``np.load``, ``from_state``); the files
  were just written, so they come from the page cache, as they do when a consumer restarts on the same host.

Run from the repository root::

    PYTHONPATH=. python bench/bench_checkpoints.py [--repeats 5] [--dir DIR] [--compress] [--models ...]

``--dir`` chooses the file system (a temporary directory under it; the default is the system's temporary
directory); ``--compress`` adds rows with ``compress=True`` (deflated .npz).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stream_logreg import OnlineLogisticRegression, optim
from stream_logreg.checkpoints import DirectoryStore

MODELS = {"vocab 1e3": 10**3, "vocab 1e5": 10**5, "hash 2^20": 20, "vocab 1e6": 10**6}


def build(name: str, seed: int = 0) -> OnlineLogisticRegression:
    """An FTRL model of the given kind with every weight (and optimizer state entry) non-zero."""
    rng = np.random.default_rng(seed)
    if name.startswith("hash"):
        model = OnlineLogisticRegression(optimizer=optim.FTRL(), n_bits=MODELS[name])
        # Keys 0..3n-1 hash into the n = 2^n_bits columns: 3 per column on average, so ~95% are hit.
        model.learn_batch(rng.standard_normal((2, 3 << MODELS[name])), np.array([0.0, 1.0]))
    else:
        model = OnlineLogisticRegression(optimizer=optim.FTRL())
        model.learn_batch(rng.standard_normal((2, MODELS[name])), np.array([0.0, 1.0]))
    return model


def median_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="file system to write to (default: the temp directory)")
    parser.add_argument("--compress", action="store_true", help="also time compress=True")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    args = parser.parse_args()

    print(f"median of {args.repeats} runs; seconds")
    header = f"{'model':<14} {'weights':>9} {'npz MB':>7} {'json MB':>7} {'save':>7} {'no fsync':>8} "
    header += f"{'state':>7} {'load':>7}"
    print(header)
    variants = [False, True] if args.compress else [False]
    for name in args.models.split(","):
        model = build(name)
        n = model.n_features
        for compress in variants:
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                store = DirectoryStore(Path(tmp) / "a", keep=2, compress=compress)
                fast = DirectoryStore(Path(tmp) / "b", keep=2, fsync=False, compress=compress)
                metadata = {"offsets": {f"events:{p}": 10**9 + p for p in range(12)}}
                save = median_time(lambda: store.save(model, metadata), args.repeats)  # noqa: B023
                no_fsync = median_time(lambda: fast.save(model, metadata), args.repeats)  # noqa: B023
                state = median_time(model.state, args.repeats)
                load = median_time(store.latest, args.repeats)
                checkpoint = store.latest()
                assert checkpoint is not None and checkpoint.model.coef.tobytes() == model.coef.tobytes()
                npz = (store.path / f"{checkpoint.id}.npz").stat().st_size / 1e6
                manifest = (store.path / f"{checkpoint.id}.json").stat().st_size / 1e6
            label = name + (" (z)" if compress else "")
            print(
                f"{label:<14} {n:>9,} {npz:>7.2f} {manifest:>7.2f} {save:>7.3f} {no_fsync:>8.3f} "
                f"{state:>7.3f} {load:>7.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

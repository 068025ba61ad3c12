"""What checkpoints cost: save and load time and bytes of FTRL models, large vocabularies and hashed spaces.

Each model is FTRL (so the optimizer's z and n are saved with w: three float64 arrays of n entries). Models:

- ``vocab 1e6`` / ``vocab 5e6``: a vocabulary of n features, every weight non-zero (``learn_batch`` on an
  array of n columns: int keys); the vocabulary (n keys) is written with the arrays;
- ``names 1e6`` / ``names 5e6``: a vocabulary of n named features (dict rows): half numeric features with
  ``str`` keys (``"f123"``), half indicators of ``str`` values (``"c123=v123"``), every weight non-zero;
- ``hash 2^20 full``: ``n_bits=20`` with ~95% of the 1,048,576 weights non-zero (no vocabulary);
- ``hash 2^20 9 used`` / ``hash 2^24 9 used``: ``n_bits=20`` / ``24`` on the 9 features of River's Phishing
  dataset (the case of ``--n-bits 24`` on 9 features): few weights in use, the arrays mostly zero.

For each, the median of ``--repeats`` runs of:

- ``save``: ``DirectoryStore.save`` as the consumer calls it (``model.state()``, the .npz, sha256, manifest,
  fsync of both files and of the directory, retention), and the same without the fsyncs (``fsync=False``:
  the difference is what durability costs on this disk);
- ``state``: ``model.state()`` alone (the model's share of ``save``);
- ``load``: ``DirectoryStore.latest`` (read, verify both checksums and the arrays, ``from_state``); the files
  were just written, so they come from the page cache, as they do when a consumer restarts on the same host.

Sizes: ``npz MB`` (the array file, with the vocabulary in schema version 2) and ``json MB`` (the manifest).
``--compress`` adds rows with ``compress=True`` (deflated .npz) and prints, per model, the ratio of their
bytes and save time to those of the plain rows (the peer, run in the same process).

Run from the repository root (keep it under 2 minutes on a shared machine: ``--models`` picks some)::

    PYTHONPATH=. python bench/bench_checkpoints.py [--repeats 3] [--dir DIR] [--compress] [--models ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from river import datasets

from stream_logreg import OnlineLogisticRegression, optim
from stream_logreg.checkpoints import DirectoryStore

MODELS = ["vocab 1e6", "vocab 5e6", "names 1e6", "names 5e6", "hash 2^20 full", "hash 2^20 9 used",
          "hash 2^24 9 used"]


def build(name: str, seed: int = 0) -> OnlineLogisticRegression:
    """An FTRL model of the given kind (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    kind, size = name.split()[:2]
    if kind == "vocab":
        model = OnlineLogisticRegression(optimizer=optim.FTRL())
        model.learn_batch(rng.standard_normal((2, int(float(size)))), np.array([0.0, 1.0]))
        return model
    if kind == "names":
        half = int(float(size)) // 2
        row = {**{f"f{i}": 1.0 for i in range(half)}, **{f"c{i}": f"v{i}" for i in range(half)}}
        model = OnlineLogisticRegression(optimizer=optim.FTRL())
        model.learn_one(row, 0), model.learn_one(row, 1)
        return model
    n_bits = int(size.removeprefix("2^"))
    model = OnlineLogisticRegression(optimizer=optim.FTRL(), n_bits=n_bits)
    if name.endswith("full"):
        # Keys 0..3n-1 hash into the n = 2^n_bits columns: 3 per column on average, so ~95% are hit.
        model.learn_batch(rng.standard_normal((2, 3 << n_bits)), np.array([0.0, 1.0]))
    else:
        for x, y in datasets.Phishing():
            model.learn_one(x, y)
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="file system to write to (default: the temp directory)")
    parser.add_argument("--compress", action="store_true", help="also time compress=True")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    args = parser.parse_args()

    print(f"median of {args.repeats} runs; seconds")
    header = f"{'model':<20} {'weights':>10} {'non-zero':>9} {'npz MB':>8} {'json MB':>7} {'save':>7} "
    header += f"{'no fsync':>8} {'state':>7} {'load':>7}"
    print(header)
    variants = [False, True] if args.compress else [False]
    for name in args.models.split(","):
        model = build(name)
        n = model.n_features
        nonzero = int(np.count_nonzero(model.coef))
        rows = {}
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
                store.close(), fast.close()
            rows[compress] = (npz, save)
            label = name + (" (z)" if compress else "")
            print(
                f"{label:<20} {n:>10,} {nonzero:>9,} {npz:>8.3f} {manifest:>7.3f} {save:>7.3f} "
                f"{no_fsync:>8.3f} {state:>7.3f} {load:>7.3f}",
                flush=True,
            )
        if args.compress:
            (z_bytes, z_save), (bytes_, save_) = rows[True], rows[False]
            print(f"{'':<20} compressed / plain: bytes x{z_bytes / bytes_:.2f}, "
                  f"save time x{z_save / save_:.2f}")


if __name__ == "__main__":
    main()

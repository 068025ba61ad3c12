"""Speed of the learner, per sample and per mini-batch, against River, a bare numpy loop and scikit-learn.

Run from the repository root (after building the kernel with ``python setup.py build_ext --inplace``)::

    python bench/bench_learner.py [--repeats 5] [--rows 20000] [--batches 100]

Every figure is the median of ``--repeats`` runs (the minimum is shown too: on a busy machine it is the
steadier of the two); in each repeat the contenders run one after the other on the same data, each with a
fresh model. The per-event sections (1 and 4) count this process's CPU time (``time.process_time``), the
others the wall time. What is measured:

1. per-sample: ``predict_proba_one`` then ``learn_one`` on dict rows of 20 float features, µs per step,
   ours (``optim.SGD(0.1)`` and the default optimizer, the Bayes mixture ``optim.Mixture()``: eight
   members) against ``river.linear_model.LogisticRegression`` (``optimizer=optim.SGD(0.1)``). Bars:
   ours SGD/River ≤ 0.3; ours default/River ≤ 0.7 (goal 0.5). Then the scaled path: ``scale=True``
   against River's ``StandardScaler() | LogisticRegression(optimizer=optim.SGD(0.1))``. Bar: ≤ 0.4.
   Context: ours ``predict_learn_one`` with ``scale=True`` (the service's call; one compiled step).
   (``--only-scaled`` runs the scaled comparisons alone, with the scaled ``learn_many`` of section 2.)
2. mini-batch on dense float64 arrays (100 features, batches of 1024): samples/s of ``learn_batch``
   (``optim.SGD(0.1)``) against a bare numpy loop of the seed formula in this process. Bar: ≥ 0.9.
   Then ``learn_many`` on pandas frames of the same batches against River's ``learn_many``. Bar: ≥ 1.5.
   Then, context: ``learn_many`` with ``scale=True`` against River's ``StandardScaler() |
   LogisticRegression()`` ``learn_many`` (the same update, checked first).
3. context: scikit-learn ``SGDClassifier(loss="log_loss")`` ``partial_fit`` per sample (numpy rows, fewer
   of them: it is slow) and per batch.
4. click-through rows (``--click-rows``, ``--click-fields``; ``--only-click`` runs this section alone):
   30 string fields, 10^4–10^5 values each, new values every few events; ours ``predict_learn_one`` on
   the raw rows (vocabulary and ``n_bits=18``; default optimizer and ``optim.SGD(0.01)``) against River's
   ``LogisticRegression(optimizer=SGD(0.01))`` on the rows one-hot encoded beforehand. Bar: ≤ 0.5.
   Context: a second pass over a quarter of the rows, every value known (the compiled step alone), for
   SGD(0.01) and the default optimizer: what the mixture's own work and memory (11 numbers a column)
   cost, apart from creating new columns.

Before timing, each mini-batch contender's weights are checked against the bare loop's, so that the same
computation is timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402
import river  # noqa: E402
from river import linear_model  # noqa: E402
from river import optim as river_optim  # noqa: E402

import stream_logreg  # noqa: E402
from stream_logreg import OnlineLogisticRegression, optim  # noqa: E402

LR = 0.1

#: The clock of the per-event sections (1 and 4): this process's CPU time, so that the other processes of a
#: shared machine, which deschedule it at random, do not count (on an idle machine it is the wall time).
per_event_clock = time.process_time


def blas_report() -> list[str]:
    lines = [f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(not set)')}"]
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        lines.append("threadpoolctl: not installed (BLAS unknown)")
        return lines
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            lines.append(
                "BLAS (threadpoolctl): {internal_api} {version}, architecture {architecture}, "
                "{num_threads} threads, {filepath}".format(**{k: info.get(k) for k in (
                    "internal_api", "version", "architecture", "num_threads", "filepath")})
            )
    if len(lines) == 1:
        lines.append("BLAS (threadpoolctl): none reported")
    return lines


def repeat(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each contender ``repeats`` times, interleaved, the order rotated by one each round (so that no
    contender always runs first, or right after the same other one: what the one before leaves behind,
    freed memory to reuse or caches to refill, changes the next one's time); each call returns its own
    elapsed seconds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(contenders[name]())
    return times


# 1. Per sample


def make_rows(n_rows: int, n_features: int, seed: int) -> tuple[list[dict], list[bool], np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, n_features))
    true_w = rng.standard_normal(n_features)
    y = rng.random(n_rows) < 1.0 / (1.0 + np.exp(-(X @ true_w)))
    names = [f"f{j:02d}" for j in range(n_features)]
    rows = [dict(zip(names, map(float, row), strict=True)) for row in X]
    return rows, [bool(v) for v in y], X


def per_sample_runner(
    make_model: Callable[[], object], rows: list[dict], ys: list[bool]
) -> Callable[[], float]:
    def run() -> float:
        model = make_model()
        predict, learn = model.predict_proba_one, model.learn_one
        start = per_event_clock()
        for x, y in zip(rows, ys, strict=True):
            predict(x)
            learn(x, y)
        return per_event_clock() - start

    return run


def sklearn_per_sample_runner(X: np.ndarray, ys: list[bool]) -> Callable[[], float]:
    from sklearn.linear_model import SGDClassifier

    y_arr = np.array(ys, dtype=np.int64)

    def run() -> float:
        clf = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=LR, alpha=0.0)
        classes = np.array([0, 1])
        rows = [X[i : i + 1] for i in range(len(X))]
        labels = [y_arr[i : i + 1] for i in range(len(X))]
        start = per_event_clock()
        clf.partial_fit(rows[0], labels[0], classes=classes)  # the first call only learns
        for xi, yi in zip(rows[1:], labels[1:], strict=True):
            clf.predict_proba(xi)
            clf.partial_fit(xi, yi)
        return per_event_clock() - start

    return run


# 2. Mini-batches


def make_batches(n_batches: int, m: int, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    true_w = rng.standard_normal(n) / np.sqrt(n)
    batches = []
    for _ in range(n_batches):
        X = rng.standard_normal((m, n))
        y = (rng.random(m) < 1.0 / (1.0 + np.exp(-(X @ true_w)))).astype(np.float64)
        batches.append((X, y))
    return batches


def bare_numpy(batches: list[tuple[np.ndarray, np.ndarray]], lr: float) -> tuple[np.ndarray, float]:
    """The seed's formula, as plainly as numpy allows: z = Xw + b, h = σ(z), ∇ = (1/m)Xᵀ(h − y), step."""
    w = np.zeros(batches[0][0].shape[1])
    b = 0.0
    for X, y in batches:
        m = X.shape[0]
        h = 1.0 / (1.0 + np.exp(-(X @ w + b)))
        r = h - y
        w -= lr * (r @ X) / m
        b -= lr * r.sum() / m
    return w, b


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def ours_learn_batch(batches, make_model) -> OnlineLogisticRegression:
    model = make_model()
    learn = model.learn_batch
    for X, y in batches:
        learn(X, y)
    return model


def learn_many(frames, model):
    for X, y in frames:
        model.learn_many(X, y)
    return model


def sklearn_batches(batches) -> object:
    from sklearn.linear_model import SGDClassifier

    clf = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=LR, alpha=0.0)
    classes = np.array([0, 1])
    for X, y in batches:
        clf.partial_fit(X, y, classes=classes)
    return clf


# 4. Click-through rows: high-cardinality categorical fields, new values every few events


def _category(v: int) -> str:
    """An 8-digit hex code that does not read as a number (``"838969e1"`` would: the model refuses it)."""
    code = f"{v:08x}"
    return code if any(c in "abcdf" for c in code) else "c" + code[1:]


def make_click_rows(
    n_rows: int, n_fields: int, seed: int
) -> tuple[list[dict], list[dict], list[bool], float]:
    """Criteo-like rows: ``n_fields`` string fields ``C01``… whose values are 8-digit hex codes drawn
    log-uniformly from 10^4–10^5 distinct values per field (a heavy head and a long tail, so that most
    events carry a value never seen before), with a label that depends on a few of them. Returns the rows,
    the same rows one-hot encoded for River (``{"C01=68fd1e64": 1.0, ...}``), the labels, and the share of
    values per event not seen earlier."""
    rng = np.random.default_rng(seed)
    names = [f"C{j + 1:02d}" for j in range(n_fields)]
    cards = np.round(np.logspace(4, 5, n_fields)).astype(np.int64)
    codes = [[_category(int(v)) for v in rng.integers(0, 1 << 32, int(c))] for c in cards]
    effects = [rng.standard_normal(int(c)) for c in cards[:4]]
    idx = np.floor(cards[None, :] ** rng.random((n_rows, n_fields))).astype(np.int64) - 1
    rows, onehot, ys, seen, n_new = [], [], [], set(), 0
    for r in idx:
        x = {name: codes[j][i] for j, (name, i) in enumerate(zip(names, r, strict=True))}
        logit = sum(float(effects[j][r[j]]) for j in range(len(effects))) * 0.5
        ys.append(bool(rng.random() < 1.0 / (1.0 + np.exp(-logit))))
        keys = [f"{k}={v}" for k, v in x.items()]
        n_new += sum(k not in seen for k in keys)
        seen.update(keys)
        rows.append(x)
        onehot.append(dict.fromkeys(keys, 1.0))
    return rows, onehot, ys, n_new / n_rows


def predict_learn_runner(
    make_model: Callable[[], OnlineLogisticRegression], rows: list[dict], ys: list[bool]
) -> Callable[[], float]:
    def run() -> float:
        model = make_model()
        step = model.predict_learn_one
        start = per_event_clock()
        for x, y in zip(rows, ys, strict=True):
            step(x, y)
        return per_event_clock() - start

    return run


def river_one_hot_runner(rows: list[dict], ys: list[bool], lr: float) -> Callable[[], float]:
    """River as a user with raw rows runs it: each row one-hot encoded (``{f"{k}={v}": 1.0}``) per event."""
    def run() -> float:
        model = linear_model.LogisticRegression(optimizer=river_optim.SGD(lr))
        predict, learn = model.predict_proba_one, model.learn_one
        start = per_event_clock()
        for x, y in zip(rows, ys, strict=True):
            z = {f"{k}={v}": 1.0 for k, v in x.items()}
            predict(z)
            learn(z, y)
        return per_event_clock() - start

    return run


def second_pass_runner(
    make_model: Callable[[], object], rows: list[dict], ys: list[bool], river: bool
) -> Callable[[], float]:
    """A second pass over the same rows, every value already known (the model learns the first pass
    untimed): for ours, the fully compiled per-sample step, the floor of what encoding new keys can reach."""
    def run() -> float:
        model = make_model()
        if river:
            def step(x: dict, y: bool) -> None:
                model.predict_proba_one(x)
                model.learn_one(x, y)
        else:
            step = model.predict_learn_one
        for x, y in zip(rows, ys, strict=True):
            step(x, y)
        start = per_event_clock()
        for x, y in zip(rows, ys, strict=True):
            step(x, y)
        return per_event_clock() - start

    return run


def click_through(args: argparse.Namespace) -> bool:
    """Section 4: per-event progressive validation on click-through rows, ours against River.

    Ours gets the raw rows (strings) and calls ``predict_learn_one``; River's ``LogisticRegression`` gets
    the rows already one-hot encoded (``{f"{k}={v}": 1.0}``, built outside the timing, which favours River)
    and calls ``predict_proba_one`` then ``learn_one``. Bar: ours ≤ 0.5× River's time, for the vocabulary
    and for ``n_bits=18``, with the default optimizer and with ``optim.SGD(0.01)``. For context, River
    building each one-hot dict per event (what a user with raw rows runs) is timed too, without a bar.
    """
    n = args.click_rows
    rows, onehot, ys, new_share = make_click_rows(n, args.click_fields, seed=4)
    print(f"4. click-through rows: {n:,} events of {args.click_fields} string fields, 10^4-10^5 values "
          f"per field, {new_share:.1f} values per event not seen before; per event, ours "
          "predict_learn_one on the raw rows, River predict_proba_one + learn_one on one-hot dicts")
    lr = 0.01
    times = repeat(
        {
            "river": per_sample_runner(
                lambda: linear_model.LogisticRegression(optimizer=river_optim.SGD(lr)), onehot, ys
            ),
            "river encoding": river_one_hot_runner(rows, ys, lr),
            "vocab default": predict_learn_runner(OnlineLogisticRegression, rows, ys),
            "vocab sgd": predict_learn_runner(lambda: OnlineLogisticRegression(optimizer=optim.SGD(lr)),
                                              rows, ys),
            "hash default": predict_learn_runner(lambda: OnlineLogisticRegression(n_bits=18), rows, ys),
            "hash sgd": predict_learn_runner(
                lambda: OnlineLogisticRegression(optimizer=optim.SGD(lr), n_bits=18), rows, ys
            ),
            "known ours": second_pass_runner(lambda: OnlineLogisticRegression(optimizer=optim.SGD(lr)),
                                             rows[: n // 4], ys[: n // 4], river=False),
            "known ours default": second_pass_runner(OnlineLogisticRegression, rows[: n // 4], ys[: n // 4],
                                                     river=False),
            "known river": second_pass_runner(
                lambda: linear_model.LogisticRegression(optimizer=river_optim.SGD(lr)), onehot[: n // 4],
                ys[: n // 4], river=True),
            "vocab sgd two calls": per_sample_runner(
                lambda: OnlineLogisticRegression(optimizer=optim.SGD(lr)), rows, ys
            ),
        },
        args.repeats,
    )
    row(f"River LogisticRegression(optimizer=SGD({lr})), one-hot", times["river"], n, "µs")
    row("context: River, one-hot dict built per event", times["river encoding"], n, "µs")
    labels = {
        "vocab default": "ours vocabulary, default optimizer",
        "vocab sgd": f"ours vocabulary, optim.SGD({lr})",
        "hash default": "ours n_bits=18, default optimizer",
        "hash sgd": f"ours n_bits=18, optim.SGD({lr})",
        "vocab sgd two calls": f"context: ours vocabulary, SGD({lr}), predict_proba_one + learn_one",
    }
    for key, label in labels.items():
        row(label, times[key], n, "µs")
    row(f"context: River SGD({lr}), second pass over {n // 4:,} events", times["known river"], n // 4, "µs")
    row(f"context: ours vocabulary SGD({lr}), same pass (all known)", times["known ours"], n // 4, "µs")
    row("context: ours vocabulary, default optimizer, same pass", times["known ours default"], n // 4, "µs")
    print(f"  {'context: ratio on known values (the compiled step) / River':<52} "
          f"{statistics.median(times['known ours']) / statistics.median(times['known river']):>10.3f}")
    river_t = statistics.median(times["river"])
    ok = True
    for key in ("vocab default", "vocab sgd", "hash default", "hash sgd"):
        ok &= verdict(f"ratio {labels[key].removeprefix('ours ')} / River",
                      statistics.median(times[key]) / river_t, 0.5, False)
    print()
    return ok


# Report


# The scaled paths: built-in standardization (scale=True) against River's StandardScaler() pipeline.


def scaled_per_sample(rows: list[dict], ys: list[bool], repeats: int) -> bool:
    from river import preprocessing

    times = repeat(
        {
            "ours": per_sample_runner(
                lambda: OnlineLogisticRegression(optimizer=optim.SGD(LR), scale=True), rows, ys
            ),
            "ours default": per_sample_runner(lambda: OnlineLogisticRegression(scale=True), rows, ys),
            "ours pl": predict_learn_runner(
                lambda: OnlineLogisticRegression(optimizer=optim.SGD(LR), scale=True), rows, ys
            ),
            "ours default pl": predict_learn_runner(lambda: OnlineLogisticRegression(scale=True), rows, ys),
            "river": per_sample_runner(
                lambda: preprocessing.StandardScaler()
                | linear_model.LogisticRegression(optimizer=river_optim.SGD(LR)), rows, ys
            ),
        },
        repeats,
    )
    n = len(rows)
    row(f"ours, optim.SGD({LR}), scale=True", times["ours"], n, "µs")
    row("ours, default optimizer, scale=True", times["ours default"], n, "µs")
    row(f"context: ours predict_learn_one, SGD({LR}), scale=True", times["ours pl"], n, "µs")
    row("context: ours predict_learn_one, default, scale=True", times["ours default pl"], n, "µs")
    row(f"River StandardScaler() | LogisticRegression(SGD({LR}))", times["river"], n, "µs")
    river_t = statistics.median(times["river"])
    ok = verdict("ratio ours SGD scaled / River pipeline", statistics.median(times["ours"]) / river_t, 0.4,
                 False)
    print(f"  {'ratio ours default scaled / River pipeline':<52} "
          f"{statistics.median(times['ours default']) / river_t:>10.3f}")
    return ok


def scaled_batches(frames: list, repeats: int) -> None:
    """learn_many with scale=True against River's pipeline learn_many (the same update: checked first).
    Context, no bar: both are dominated by pandas."""
    from river import preprocessing

    def pipeline():
        return preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=river_optim.SGD(LR), intercept_lr=LR)

    ours = learn_many(frames[:5], OnlineLogisticRegression(optimizer=optim.SGD(LR), scale=True))
    theirs = learn_many(frames[:5], pipeline())
    names = list(frames[0][0].columns)
    river_w = theirs["LogisticRegression"].weights
    assert np.allclose([ours.weights[k] for k in names], [river_w[k] for k in names], rtol=0, atol=1e-9)
    times = repeat(
        {
            "ours": timed(lambda: learn_many(frames, OnlineLogisticRegression(optimizer=optim.SGD(LR),
                                                                              scale=True))),
            "river": timed(lambda: learn_many(frames, pipeline())),
        },
        repeats,
    )
    n_samples = sum(len(X) for X, _ in frames)
    row(f"ours learn_many (pandas), SGD({LR}), scale=True", times["ours"], n_samples, "samples/s")
    row(f"River StandardScaler() | LR learn_many, SGD({LR})", times["river"], n_samples, "samples/s")
    print(f"  {'ratio ours scaled learn_many / River pipeline (speed)':<52} "
          f"{statistics.median(times['river']) / statistics.median(times['ours']):>10.3f}")


def row(name: str, times: list[float], units: float, unit: str, per: str = "step") -> tuple[str, float]:
    med = statistics.median(times) / units
    best = min(times) / units
    if unit == "µs":
        print(f"  {name:<52} {med * 1e6:>10.2f} µs/{per}   (min {best * 1e6:.2f})")
    else:
        print(f"  {name:<52} {1 / med:>12,.0f} samples/s   (min-time rate {1 / best:,.0f})")
    return name, med


def verdict(label: str, ratio: float, bar: float, higher_is_better: bool, goal: float | None = None) -> bool:
    ok = ratio >= bar if higher_is_better else ratio <= bar
    sign = "≥" if higher_is_better else "≤"
    extra = f", goal {goal}" if goal is not None else ""
    print(f"  {label:<52} {ratio:>10.3f}   (bar {sign} {bar}{extra}: {'ok' if ok else 'MISSED'})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000, help="per-sample rows")
    parser.add_argument("--sklearn-rows", type=int, default=2_000, help="per-sample rows for scikit-learn")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--features", type=int, default=100, help="features of the mini-batch benchmark")
    parser.add_argument(
        "--blas-threads", type=int, default=None,
        help="limit every BLAS to this many threads (threadpoolctl), e.g. 1 on a busy machine",
    )
    parser.add_argument("--click-rows", type=int, default=20_000, help="click-through events")
    parser.add_argument("--click-fields", type=int, default=30, help="string fields per click-through row")
    parser.add_argument("--only-click", action="store_true", help="run only the click-through benchmark")
    parser.add_argument("--only-scaled", action="store_true",
                        help="run only the scale=True comparisons with River's StandardScaler pipeline")
    args = parser.parse_args()
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.blas_threads, user_api="blas")

    import sklearn

    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; numpy "
          f"{np.__version__}, pandas {pd.__version__}, river {river.__version__}, scikit-learn "
          f"{sklearn.__version__}, stream_logreg {stream_logreg.__version__}")
    for line in blas_report():
        print(line)
    print(f"median of {args.repeats} repeats\n")
    if args.only_click:
        return 0 if click_through(args) else 1
    if args.only_scaled:
        rows, ys, _ = make_rows(args.rows, 20, seed=1)
        print(f"1. scale=True, predict_proba_one + learn_one, {args.rows:,} dict rows of 20 float features")
        ok = scaled_per_sample(rows, ys, args.repeats)
        batches = make_batches(args.batches, args.batch_size, args.features, seed=2)
        names = [f"f{j:03d}" for j in range(args.features)]
        print(f"2. scale=True, learn_many: {args.batches} batches of {args.batch_size} x {args.features}")
        scaled_batches([(pd.DataFrame(X, columns=names), pd.Series(y.astype(bool))) for X, y in batches],
                       args.repeats)
        return 0 if ok else 1
    ok = True

    # 1. Per sample
    rows, ys, X_rows = make_rows(args.rows, 20, seed=1)
    print(f"1. predict_proba_one + learn_one, {args.rows:,} dict rows of 20 float features")
    times = repeat(
        {
            "ours": per_sample_runner(lambda: OnlineLogisticRegression(optimizer=optim.SGD(LR)), rows, ys),
            "ours default": per_sample_runner(OnlineLogisticRegression, rows, ys),
            "river": per_sample_runner(
                lambda: linear_model.LogisticRegression(optimizer=river_optim.SGD(LR)), rows, ys
            ),
        },
        args.repeats,
    )
    n = len(rows)
    row(f"ours, optim.SGD({LR})", times["ours"], n, "µs")
    row("ours, default optimizer (Mixture: 8 members)", times["ours default"], n, "µs")
    row(f"River LogisticRegression(optimizer=SGD({LR}))", times["river"], n, "µs")
    river_t = statistics.median(times["river"])
    ok &= verdict("ratio ours SGD / River", statistics.median(times["ours"]) / river_t, 0.3, False)
    default_t = statistics.median(times["ours default"])
    ok &= verdict("ratio ours default / River", default_t / river_t, 0.7, False, 0.5)
    ok &= scaled_per_sample(rows, ys, args.repeats)
    sk = repeat({"sk": sklearn_per_sample_runner(X_rows[: args.sklearn_rows], ys[: args.sklearn_rows])},
                args.repeats)
    row(f"context: sklearn SGDClassifier partial_fit ({args.sklearn_rows:,} numpy rows)", sk["sk"],
        args.sklearn_rows - 1, "µs")
    print()

    # 2. Mini-batches
    m, nf = args.batch_size, args.features
    batches = make_batches(args.batches, m, nf, seed=2)
    names = [f"f{j:03d}" for j in range(nf)]
    frames = [(pd.DataFrame(X, columns=names), pd.Series(y.astype(bool))) for X, y in batches]
    n_samples = args.batches * m
    print(f"2. mini-batch learning: {args.batches} batches of {m} x {nf} float64")

    # Same computation? (ours and River against the bare loop, on the first batches)
    w_ref, b_ref = bare_numpy(batches[:10], LR)
    ours = ours_learn_batch(batches[:10], lambda: OnlineLogisticRegression(optimizer=optim.SGD(LR)))
    assert np.allclose(ours.coef, w_ref, rtol=0, atol=1e-9) and abs(ours.intercept - b_ref) < 1e-9
    ours_df = learn_many(frames[:10], OnlineLogisticRegression(optimizer=optim.SGD(LR)))
    theirs = learn_many(frames[:10], linear_model.LogisticRegression(optimizer=river_optim.SGD(LR),
                                                                     intercept_lr=LR))
    assert np.allclose([ours_df.weights[k] for k in names], w_ref, rtol=0, atol=1e-9)
    assert np.allclose([theirs.weights[k] for k in names], w_ref, rtol=0, atol=1e-9)

    times = repeat(
        {
            "bare": timed(lambda: bare_numpy(batches, LR)),
            "ours": timed(lambda: ours_learn_batch(batches, lambda: OnlineLogisticRegression(
                optimizer=optim.SGD(LR)))),
            "ours default": timed(lambda: ours_learn_batch(batches, OnlineLogisticRegression)),
            "ours df": timed(lambda: learn_many(frames, OnlineLogisticRegression(optimizer=optim.SGD(LR)))),
            "river df": timed(lambda: learn_many(frames, linear_model.LogisticRegression(
                optimizer=river_optim.SGD(LR), intercept_lr=LR))),
            "sklearn": timed(lambda: sklearn_batches(batches)),
        },
        args.repeats,
    )
    row("bare numpy loop of the seed formula", times["bare"], n_samples, "samples/s")
    row(f"ours learn_batch, optim.SGD({LR})", times["ours"], n_samples, "samples/s")
    row("ours learn_batch, default optimizer (Mixture)", times["ours default"], n_samples, "samples/s")
    ok &= verdict("ratio ours learn_batch / bare numpy (speed)",
                  statistics.median(times["bare"]) / statistics.median(times["ours"]), 0.9, True)
    row(f"ours learn_many (pandas), optim.SGD({LR})", times["ours df"], n_samples, "samples/s")
    row(f"River learn_many (pandas), SGD({LR})", times["river df"], n_samples, "samples/s")
    ok &= verdict("ratio ours learn_many / River learn_many (speed)",
                  statistics.median(times["river df"]) / statistics.median(times["ours df"]), 1.5, True)
    row("context: sklearn SGDClassifier partial_fit per batch", times["sklearn"], n_samples, "samples/s")
    scaled_batches(frames, args.repeats)
    print(f"  (per batch: bare {statistics.median(times['bare']) / args.batches * 1e6:.1f} µs, ours "
          f"{statistics.median(times['ours']) / args.batches * 1e6:.1f} µs)")
    print()
    ok &= click_through(args)
    print("all bars met" if ok else "SOME BARS MISSED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

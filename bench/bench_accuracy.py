"""Accuracy benchmark: progressive validation of our defaults against River, Vowpal Wabbit and scikit-learn.

Every model sees each stream once, in order: for each event it predicts P(y = 1 | x) first, then learns
(x, y). Log loss (p clipped to [1e-15, 1 − 1e-15]) and accuracy (p > 0.5 means y = 1) are averaged over
the whole stream. Run from the repository root::

    PYTHONPATH=. python bench/bench_accuracy.py                 # the full table (~2.5 min on one core)
    PYTHONPATH=. python bench/bench_accuracy.py --n 20000       # shorter synthetic streams
    PYTHONPATH=. python bench/bench_accuracy.py --streams phishing,ctr --models ours,river
    PYTHONPATH=. python bench/bench_accuracy.py --seed 1        # reseeded / shuffled streams

Streams (fixed seeds): River's bundled Phishing (1,250) and Bananas (5,300); River's synthetic SEA,
Hyperplane and Agrawal (``--n`` events each, 100,000 by default); and a synthetic click-through stream
(``--n`` events of high-cardinality categorical ids with a known logistic ground truth, see :func:`ctr`).

Feature treatment, decided per stream and printed with the table:

- ``scaled``: a ``river.preprocessing.StandardScaler`` sits in front of our model, River's models and
  scikit-learn's (the gradient-descent learners that have no feature normalization of their own). The
  scaler does not depend on the model after it, so its outputs are computed once per stream, exactly as
  a ``StandardScaler() | model`` pipeline computes them: ``transform_one`` with the statistics so far to
  predict, then ``learn_one`` and ``transform_one`` to learn (:func:`scaled_rows`). Vowpal Wabbit gets the
  raw features: its default update is normalized (``--adaptive --normalized --invariant``) and scaling
  them is part of what its defaults are.
- ``raw``: the features as they are, for every model.
- ``hashed``: the click-through stream. Our model hashes ``{"site": "s12", ...}`` into 2^18 columns
  (``n_bits=18``, VW's default table size); River gets the one-hot dict ``{"site=s12": 1.0, ...}``;
  scikit-learn gets ``FeatureHasher(2**18)`` of the same ``site=s12`` strings; VW hashes them natively.

Models: ours with the model's defaults (``OnlineLogisticRegression()``) and a few named settings; River
``linear_model.LogisticRegression()`` with its defaults (``optim.SGD(0.01)``), with ``optim.SGD(0.1)``
and with ``optim.Adam()``; VW ``--loss_function logistic`` (labels −1/1, predict then learn, p = σ(raw
prediction)); scikit-learn ``SGDClassifier(loss="log_loss")`` with ``partial_fit`` per event (p = σ of
its decision function, which is what its ``predict_proba`` computes, read from ``coef_`` and
``intercept_`` to skip its per-call validation; 0.5 before the first fit). The ratio columns are ours
over River's default model on the same stream; ``best anchor`` is the lowest log loss among River
(three settings), VW and scikit-learn. On the click-through stream, ``excess/River`` is the log loss above
the true probabilities' (the Bayes rate) over River default's. River's Adam is skipped there unless
``--slow`` (see ``SLOW``). Most of the run time is scikit-learn's ``partial_fit`` (~0.2 ms per call, and
O(2^18) per call on the hashed stream).

After the table, the bar the model's defaults must clear: log loss ≤ 1.0× River's default model on every
stream, ≤ 0.9× on Phishing and the click-through stream, and ≤ the best anchor on at least half the
streams. The figures in ``TREATMENT_NOTES`` (raw vs scaled) were measured with these functions and
``river_stream(..., scale=False)``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_logreg import OnlineLogisticRegression, optim  # noqa: E402

EPS = 1e-15
CTR_BITS = 18


# Streams


@dataclass
class Stream:
    """One benchmark stream: raw rows, the rows our model and River see to predict and to learn, labels."""

    name: str
    treatment: str  # "scaled", "raw" or "hashed"
    xs: list[dict]  # raw rows (VW's input; our and River's input when not scaled)
    ys: list[bool]
    pred_rows: list[dict] = field(default_factory=list)
    learn_rows: list[dict] = field(default_factory=list)
    n_bits: int | None = None
    true_p: np.ndarray | None = None  # the generating probabilities, when known

    def __len__(self) -> int:
        return len(self.ys)


def scaled_rows(xs: list[dict]) -> tuple[list[dict], list[dict]]:
    """What ``StandardScaler() | model`` feeds the model: the rows to predict on and the rows to learn."""
    from river import preprocessing

    scaler = preprocessing.StandardScaler()
    pred, learn = [], []
    for x in xs:
        pred.append(scaler.transform_one(x))
        scaler.learn_one(x)
        learn.append(scaler.transform_one(x))
    return pred, learn


def river_stream(name: str, dataset: Iterable, scale: bool) -> Stream:
    xs, ys = [], []
    for x, y in dataset:
        xs.append(dict(x))
        ys.append(bool(y))
    if scale:
        pred, learn = scaled_rows(xs)
    else:
        pred = learn = xs
    return Stream(name, "scaled" if scale else "raw", xs, ys, pred, learn)


def ctr(n: int, seed: int = 7) -> Stream:
    """A synthetic click-through stream with a known logistic ground truth over categorical ids.

    Each event has a site (1,000 ids), an ad (10,000), a user (100,000), a device (4) and an hour (24),
    drawn with Zipf-like popularity (p ∝ 1/rank^1.1 for ids), so a few ids are frequent and most are rare.
    The click probability is σ(b + s_site + a_ad + u_user + d_device + h_hour) with b = −2 and effects
    drawn once from normal distributions (sd 0.5 sites, 0.7 ads, 0.8 users, fixed device and hour effects):
    logistic regression on the one-hot ids is well specified, and the log loss of the true probabilities
    (the Bayes rate) is printed as a reference.
    """
    rng = np.random.default_rng(seed)

    def zipf(k: int, s: float = 1.1) -> np.ndarray:
        p = 1.0 / np.arange(1, k + 1) ** s
        return p / p.sum()

    fields = {  # name: (cardinality, popularity, effects)
        "site": (1_000, zipf(1_000), rng.normal(0.0, 0.5, 1_000)),
        "ad": (10_000, zipf(10_000), rng.normal(0.0, 0.7, 10_000)),
        "user": (100_000, zipf(100_000), rng.normal(0.0, 0.8, 100_000)),
        "device": (4, np.array([0.55, 0.3, 0.1, 0.05]), np.array([0.0, -0.3, 0.4, 0.8])),
        "hour": (24, np.full(24, 1 / 24), 0.4 * np.sin(np.arange(24) * 2 * np.pi / 24)),
    }
    logit = np.full(n, -2.0)
    ids = {}
    for name, (k, popularity, effects) in fields.items():
        perm = rng.permutation(k)  # popularity rank is unrelated to the id's number
        ids[name] = perm[rng.choice(k, size=n, p=popularity)]
        logit += effects[ids[name]]
    p = 1.0 / (1.0 + np.exp(-logit))
    y = rng.random(n) < p
    xs = [{name: f"{name[0]}{ids[name][i]}" for name in fields} for i in range(n)]
    return Stream("ctr", "hashed", xs, y.tolist(), xs, xs, n_bits=CTR_BITS, true_p=p)


def load_streams(names: list[str], n: int, seed: int | None = None) -> dict[str, Stream]:
    """The named streams. ``seed=None`` is the canonical benchmark: River's bundled datasets in their
    order, SEA, Hyperplane and Agrawal with seed 42, the click-through stream with seed 7. Another seed
    reseeds the synthetic streams and shuffles the bundled ones (to see how much a ranking owes to chance).
    """
    from river import datasets
    from river.datasets import synth

    def bundled(dataset: Iterable) -> list:
        rows = list(dataset)
        if seed is not None:
            order = np.random.default_rng(seed).permutation(len(rows))
            rows = [rows[i] for i in order]
        return rows

    s = 42 if seed is None else seed
    makers: dict[str, Callable[[], Stream]] = {
        "phishing": lambda: river_stream("phishing", bundled(datasets.Phishing()), scale=True),
        "bananas": lambda: river_stream("bananas", bundled(datasets.Bananas()), scale=True),
        "sea": lambda: river_stream("sea", synth.SEA(seed=s).take(n), scale=True),
        "hyperplane": lambda: river_stream("hyperplane", synth.Hyperplane(seed=s).take(n), scale=True),
        "agrawal": lambda: river_stream("agrawal", synth.Agrawal(seed=s).take(n), scale=True),
        "ctr": lambda: ctr(n, seed=7 if seed is None else seed),
    }
    unknown = set(names) - set(makers)
    if unknown:
        raise SystemExit(f"unknown streams {sorted(unknown)}; known: {list(makers)}")
    return {name: makers[name]() for name in names}


# Progressive validation


@dataclass
class Score:
    log_loss: float
    accuracy: float
    seconds: float


def score(probas: np.ndarray, ys: list[bool], seconds: float) -> Score:
    """Mean log loss (p clipped to [1e-15, 1 − 1e-15]) and accuracy (p > 0.5 ⇔ 1) of the predictions."""
    y = np.asarray(ys, dtype=bool)
    p = np.clip(np.asarray(probas, dtype=np.float64), EPS, 1.0 - EPS)
    ll = -np.where(y, np.log(p), np.log1p(-p))
    return Score(float(ll.mean()), float(((p > 0.5) == y).mean()), seconds)


def progressive_river_api(model, stream: Stream) -> Score:
    """predict_proba_one then learn_one on each event, with River's interface (ours and River's)."""
    probas = np.empty(len(stream))
    start = time.perf_counter()
    for i, (xp, xl, y) in enumerate(zip(stream.pred_rows, stream.learn_rows, stream.ys, strict=True)):
        probas[i] = model.predict_proba_one(xp).get(True, 0.0)
        model.learn_one(xl, y)
    return score(probas, stream.ys, time.perf_counter() - start)


def one_hot(x: dict) -> dict:
    """River's input on the click-through stream: ``{"site": "s12"}`` → ``{"site=s12": 1.0}``."""
    return {f"{k}={v}": 1.0 for k, v in x.items()}


def run_ours(stream: Stream, make: Callable[[], OnlineLogisticRegression]) -> Score:
    model = make()
    if stream.n_bits is not None:
        model = model.clone({"n_bits": stream.n_bits})
    return progressive_river_api(model, stream)


def run_river(stream: Stream, optimizer_name: str) -> Score:
    from river import linear_model
    from river import optim as river_optim

    optimizer = {"default": None, "sgd0.1": river_optim.SGD(0.1), "adam": river_optim.Adam()}[optimizer_name]
    model = linear_model.LogisticRegression(optimizer=optimizer)
    if stream.treatment == "hashed":
        one_hot_rows = [one_hot(x) for x in stream.xs]
        stream = Stream(stream.name, stream.treatment, stream.xs, stream.ys, one_hot_rows, one_hot_rows)
    return progressive_river_api(model, stream)


def vw_line(x: dict, y: bool) -> str:
    if all(isinstance(v, str) for v in x.values()):
        feats = " ".join(f"{k}={v}" for k, v in x.items())
    else:
        feats = " ".join(f"f{k}:{float(v)!r}" for k, v in x.items())
    return f"{1 if y else -1} |f {feats}"


def run_vw(stream: Stream) -> Score:
    import vowpalwabbit

    lines = [vw_line(x, y) for x, y in zip(stream.xs, stream.ys, strict=True)]
    vw = vowpalwabbit.Workspace("--loss_function logistic --quiet")
    probas = np.empty(len(stream))
    start = time.perf_counter()
    for i, line in enumerate(lines):
        ex = vw.parse(line)
        raw = vw.predict(ex)
        vw.learn(ex)
        vw.finish_example(ex)
        probas[i] = 1.0 / (1.0 + math.exp(-raw))
    seconds = time.perf_counter() - start
    vw.finish()
    return score(probas, stream.ys, seconds)


def run_sklearn(stream: Stream) -> Score:
    import sklearn
    from scipy.special import expit
    from sklearn.linear_model import SGDClassifier

    sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
    if stream.treatment == "hashed":
        from sklearn.feature_extraction import FeatureHasher

        hasher = FeatureHasher(n_features=2**CTR_BITS, input_type="string")
        X = hasher.transform([f"{k}={v}" for k, v in x.items()] for x in stream.xs).tocsr()
        XP = XL = X
    else:
        keys = list(stream.xs[0])
        XP = np.array([[row.get(k, 0.0) for k in keys] for row in stream.pred_rows])
        XL = np.array([[row.get(k, 0.0) for k in keys] for row in stream.learn_rows])
    y = np.asarray(stream.ys, dtype=np.int64)
    clf = SGDClassifier(loss="log_loss")
    probas = np.empty(len(stream))
    start = time.perf_counter()
    for i in range(len(stream)):
        if i == 0:
            probas[i] = 0.5
            clf.partial_fit(XL[0:1], y[0:1], classes=np.array([0, 1]))
            continue
        raw = XP[i : i + 1] @ clf.coef_[0]
        probas[i] = expit(float(raw[0]) + clf.intercept_[0])
        clf.partial_fit(XL[i : i + 1], y[i : i + 1])
    return score(probas, stream.ys, time.perf_counter() - start)


# Models. "ours default" is whatever OnlineLogisticRegression() is; the others are named settings.

PROPOSED = "ours FTRL(.17,.5)"
OURS: dict[str, Callable[[], OnlineLogisticRegression]] = {
    "ours default": lambda: OnlineLogisticRegression(),
    PROPOSED: lambda: OnlineLogisticRegression(optimizer=optim.FTRL(alpha=0.17, beta=0.5)),
    "ours FTRL(.1,1)": lambda: OnlineLogisticRegression(optimizer=optim.FTRL(alpha=0.1, beta=1.0)),
    "ours AdaGrad(.15)": lambda: OnlineLogisticRegression(optimizer=optim.AdaGrad(0.15)),
    "ours SGD(0.1)": lambda: OnlineLogisticRegression(optimizer=optim.SGD(0.1)),
}
ANCHORS: dict[str, Callable[[Stream], Score]] = {
    "River default": lambda s: run_river(s, "default"),
    "River SGD(0.1)": lambda s: run_river(s, "sgd0.1"),
    "River Adam": lambda s: run_river(s, "adam"),
    "VW default": run_vw,
    "sklearn SGD": run_sklearn,
}
# River's Adam keeps a dense moment for every weight it has seen and moves all of them at each step, so
# on the click-through stream (~80,000 one-hot features) it costs O(features) per event: 865 s for
# 100,000 events when measured (log loss 0.5953, accuracy 0.7377). Skipped unless --slow.
SLOW = {("ctr", "River Adam")}

TREATMENT_NOTES = {
    "phishing": "scaled: River default 0.330 scaled vs 0.526 raw",
    "bananas": "scaled: features are already standardized; River default 0.6863 either way",
    "sea": "scaled: River default 0.077 scaled vs 0.126 raw",
    "hyperplane": "scaled: River default 0.283 scaled vs 0.356 raw",
    "agrawal": "scaled: raw values reach 1e5-1e6; River default 15.3 raw",
    "ctr": "hashed ids: ours n_bits=18, River one-hot dict, sklearn FeatureHasher(2^18), VW native",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="events per synthetic stream")
    parser.add_argument("--streams", default="phishing,bananas,sea,hyperplane,agrawal,ctr")
    parser.add_argument("--models", default="ours,river,vw,sklearn", help="families to run")
    parser.add_argument("--seed", type=int, default=None, help="reseed synthetic / shuffle bundled streams")
    parser.add_argument("--slow", action="store_true", help="also run River's Adam on the click stream")
    args = parser.parse_args(argv)
    families = set(args.models.split(","))

    t0 = time.perf_counter()
    streams = load_streams(args.streams.split(","), args.n, seed=args.seed)
    print(f"streams loaded in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    models: dict[str, Callable[[Stream], Score]] = {}
    if "ours" in families:
        models.update({name: (lambda s, make=make: run_ours(s, make)) for name, make in OURS.items()})
    for name, run in ANCHORS.items():
        if name.split()[0].lower() in families:
            models[name] = run

    results: dict[tuple[str, str], Score] = {}
    for sname, stream in streams.items():
        for mname, run in models.items():
            if (sname, mname) in SLOW and not args.slow:
                continue
            r = results[sname, mname] = run(stream)
            progress = f"log loss {r.log_loss:.4f}  acc {r.accuracy:.4f}  {r.seconds:6.1f}s"
            print(f"  {sname:<10} {mname:<18} {progress}", file=sys.stderr)
    print_table(streams, models, results)
    if "ours" in families and "River default" in models:
        print_verdict(streams, results)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


def best_anchor(sname: str, results: dict[tuple[str, str], Score]) -> float:
    return min((results[sname, m].log_loss for m in ANCHORS if (sname, m) in results), default=math.nan)


def print_table(streams: dict[str, Stream], models: dict, results: dict[tuple[str, str], Score]) -> None:
    print("Progressive validation: log loss (p clipped to [1e-15, 1-1e-15]) and accuracy over each stream.")
    print(
        "LL/River = log loss / River default's; LL/best = log loss / best anchor's (River ×3, VW, sklearn)."
    )
    for sname, stream in streams.items():
        reference = results.get((sname, "River default"))
        best = best_anchor(sname, results)
        bayes = None if stream.true_p is None else score(stream.true_p, stream.ys, 0.0)
        print(f"\n{sname}: {len(stream):,} events; {TREATMENT_NOTES.get(sname, stream.treatment)}")
        header = f"  {'model':<18} {'log loss':>9} {'accuracy':>9} {'LL/River':>9} {'LL/best':>8}"
        if bayes is not None:
            header += f" {'excess/River':>12}"
        print(header + f" {'time':>7}")
        for mname in models:
            r = results.get((sname, mname))
            if r is None:
                print(f"  {mname:<18} {'skipped (see SLOW; --slow runs it)':>49}")
                continue
            ratio = r.log_loss / reference.log_loss if reference else math.nan
            line = f"  {mname:<18} {r.log_loss:9.4f} {r.accuracy:9.4f} {ratio:9.4f} {r.log_loss / best:8.4f}"
            if bayes is not None:
                excess = (r.log_loss - bayes.log_loss) / (reference.log_loss - bayes.log_loss)
                line += f" {excess:12.3f}"
            print(line + f" {r.seconds:6.1f}s")
        if bayes is not None:
            line = f"  {'true p (Bayes)':<18} {bayes.log_loss:9.4f} {bayes.accuracy:9.4f}"
            print(line + f" {bayes.log_loss / reference.log_loss:9.4f}" if reference else line)


def print_verdict(streams: dict[str, Stream], results: dict[tuple[str, str], Score]) -> None:
    """The bar for our defaults: log loss ≤ 1.0× River's default model on every stream, ≤ 0.9× on
    Phishing and the click-through stream, and ≤ the best anchor's on at least half the streams."""
    print("\nThe bar: LL/River <= 1 everywhere, <= 0.9 on phishing and ctr, LL <= best anchor on >= half.")
    print(f"  {'model':<18} {'worst LL/River':>22} {'phishing':>9} {'ctr':>7} {'<= best anchor':>16}")
    names = list(streams)
    for mname in OURS:
        ratios = {s: results[s, mname].log_loss / results[s, "River default"].log_loss for s in names}
        worst = max(ratios, key=ratios.__getitem__)
        wins = [s for s in names if results[s, mname].log_loss <= best_anchor(s, results)]
        print(
            f"  {mname:<18} {ratios[worst]:9.4f} ({worst:<10}) {ratios.get('phishing', math.nan):9.4f} "
            f"{ratios.get('ctr', math.nan):7.4f} {len(wins)}/{len(names)} {','.join(w[:5] for w in wins)}"
        )


if __name__ == "__main__":
    main()

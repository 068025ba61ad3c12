"""The compiled pass with the GIL released (`learn_values(..., release_gil=True)`, the default) against the
same pass with the GIL held throughout: bitwise the same model state, optimizer counts, predictions, labels
and stops; and the GIL is really released (another thread runs while the pass learns)."""

from __future__ import annotations

import random
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stream_logreg._stream import learn_values

from consumers.settings import MODEL_SETTINGS, build_model
from stream_logreg.codec import Event, JsonCodec, encode_event
from tests.test_stream_loop import _value

# Mostly the common shape (the runs learned without the GIL), with every kind of value that stops them.
_KINDS = st.sampled_from(["labelled"] * 6 + ["unlabelled", "garbage", "bad_label", "huge", "hostile",
                                             "repeated", "ints", "new"])


def _model():
    return build_model({s.name: s.default for s in MODEL_SETTINGS})  # the service's default: the mixture


def _state(model) -> tuple:
    """Everything the model holds, as bytes and numbers (arrays bitwise), and its optimizers' counts."""
    out = []
    for part in model.state():
        if isinstance(part, dict):
            for k in sorted(part):
                v = part[k]
                out.append((k, v.tobytes() if isinstance(v, np.ndarray) else repr(v)))
        else:
            out.append(repr(part))
    return (tuple(out), model.n_samples_seen, model.optimizer.n_iterations,
            model._bias_optimizer.n_iterations)


def _run(model, values, release_gil: bool, score=None):
    codec = JsonCodec()
    decode, rows = codec.decoder(), codec.row_decoder()
    ps, ys, stops = [], [], []
    i = 0
    while True:
        i, ev, exc = learn_values(decode, model.predict_learn_one, values, i, ps, ys, Event, rows, model,
                                  score, release_gil=release_gil)
        if i == len(values):
            assert ev is None and exc is None
            break
        stops.append((i, ev, None if exc is None else type(exc)))
        i += 1
    return [np.float64(p).tobytes() for p in ps], ys, stops


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(_KINDS, max_size=60), seed=st.integers(0, 2**16), scoring=st.booleans())
def test_bitwise_the_pass_with_the_gil_held(kinds: list[str], seed: int, scoring: bool) -> None:
    rng = random.Random(seed)
    values = [_value(k, rng) for k in kinds]
    values.insert(0, encode_event({f"f{j}": 0.25 for j in range(5)}, 1))  # the features known
    a, b = _model(), _model()
    scored: dict[bool, list] = {True: [], False: []}

    def scorer(flag):
        return (lambda i, x, id_, p: scored[flag].append((i, sorted(x.items()), id_,
                                                          np.float64(p).tobytes())) and False)

    got = _run(a, values, True, scorer(True) if scoring else None)
    expected = _run(b, values, False, scorer(False) if scoring else None)
    assert got == expected
    assert scored[True] == scored[False]
    assert _state(a) == _state(b)


def test_a_refused_update_leaves_the_model_unchanged() -> None:
    """A value so large that the update is not finite stops the run; the model is as before it, and the
    pass's caller gets the refusal (as with the GIL held)."""
    ok = [encode_event({f"f{j}": 0.5 * j for j in range(5)}, j % 2) for j in range(30)]
    huge = encode_event({"f0": 1e308, "f1": -1e308, "f2": 1e308}, 1)
    a, b = _model(), _model()
    _run(a, ok, True)
    _run(b, ok, True)
    before = _state(a)
    ps, ys, stops = _run(a, [huge], True)
    assert ps == [] and len(stops) == 1 and stops[0][2] is ValueError
    assert _state(a) == before
    assert _run(a, ok, True) == _run(b, ok, False)
    assert _state(a) == _state(b)


@pytest.mark.parametrize("release_gil", [True, False])
def test_another_thread_runs_while_the_pass_learns(release_gil: bool) -> None:
    """With a long switch interval a thread holding the GIL keeps it until it lets go: the main thread sees
    the pass still running only if the pass released the GIL (the control: with the GIL held, never)."""
    model = _model()
    _run(model, [encode_event({f"f{j}": 0.25 for j in range(20)}, 1)], True)  # the features known
    rng = random.Random(1)
    values = [encode_event({f"f{j}": rng.gauss(0, 1) for j in range(20)}, rng.random() > 0.5)
              for _ in range(20_000)]
    codec = JsonCodec()
    decode, rows = codec.decoder(), codec.row_decoder()
    started, finished = threading.Event(), [False]

    def worker() -> None:
        started.set()
        learn_values(decode, model.predict_learn_one, values, 0, [], [], Event, rows, model,
                     release_gil=release_gil)
        finished[0] = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        saw_it_running = not finished[0]
        t.join(60)
    finally:
        sys.setswitchinterval(old)
    assert finished[0]
    assert saw_it_running == release_gil
    assert model.n_samples_seen == 20_001


@pytest.mark.parametrize("width", [63, 64, 65, 300])
def test_wide_rows(width: int) -> None:
    """Rows wider than the scratch reserved up front stop a run once (the way with the GIL makes room);
    bitwise the same either way."""
    rng = random.Random(width)
    values = [encode_event({f"f{j}": rng.gauss(0, 1) for j in range(rng.randint(1, width))},
                           rng.random() > 0.5) for _ in range(200)]
    values.insert(0, encode_event({f"f{j}": 0.0 for j in range(width)}, 1))
    a, b = _model(), _model()
    assert _run(a, values, True) == _run(b, values, False)
    assert _state(a) == _state(b)

"""What the delayed-label join store costs: per call, per pending event in memory, per checkpoint.

In one process, on typical events (20 float features, a string id), best of R rounds (the machine is shared):

1. ``add_event`` (stored) and ``add_label`` (joins it) in ns per call, beside a plain ``dict`` insert + pop of
   the same rows (the least a join can cost), and per event of ``add_events`` / ``add_labels`` (the
   learner's: a polled batch a call);
2. per event, from message bytes: today's labelled path (decode, ``predict_learn_one``) vs the joined path
   (decode, ``predict_proba_one``, ``add_event``; decode the label, ``add_label``, ``learn_one``), as a ratio;
3. bytes per pending event: memory held by the store (tracemalloc) vs the store's own estimate, before the
   first ``to_state`` and after it (the store then keeps the events' bytes packed);
4. ``to_state`` / ``from_state`` CPU time (and state size) for 10^4 and 10^5 pending events: ``to_state``'s
   first call (every entry new to it) and a call after 10,000 changes (5,000 joins, 5,000 new events), each
   beside the whole store packed anew (the reference: ``to_state`` as it was, ``tests/test_join_store.py``),
   on a twin store fed the same; the outputs are checked equal, bit for bit.

    PYTHONPATH=. python bench/bench_join_store.py [--n 50000] [--rounds 3] [--features 20]
        [--state 10000,100000]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

import orjson

from consumers.state.join_store import JoinStore
from stream_logreg import OnlineLogisticRegression
from stream_logreg.codec import JsonCodec, encode_event


def typical_rows(n: int, n_features: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    rng = random.Random(seed)
    names = [f"feature_{i:02d}" for i in range(n_features)]  # shared key objects, as the codec's orjson gives
    return [f"evt-{i:09d}" for i in range(n)], [{k: rng.gauss(0.0, 1.0) for k in names} for _ in range(n)]


def time_store(ids: list[str], rows: list[dict]) -> tuple[float, float]:
    """ns per add_event (stored) and per add_label (joined)."""
    n = len(ids)
    store = JoinStore(max_pending=n, max_bytes=2**40, label_ttl_ms=10**12)
    add_event, add_label = store.add_event, store.add_label
    t0 = time.perf_counter_ns()
    for i in range(n):
        add_event(ids[i], rows[i], 0.5, version=i, ts=i, topic="events", partition=0, offset=i)
    t1 = time.perf_counter_ns()
    for i in range(n):
        add_label(ids[i], 1, ts=n + i, topic="labels", partition=0, offset=i)
    t2 = time.perf_counter_ns()
    assert store.counters["joined"] == n
    return (t1 - t0) / n, (t2 - t1) / n


def time_batches(ids: list[str], rows: list[dict], chunk: int = 500) -> tuple[float, float]:
    """ns per event of ``add_events`` (stored, kept as their record values: the learner's way) and of
    ``add_labels`` (joins them), in polled batches of ``chunk``."""
    codec = JsonCodec()
    n = len(ids)
    values = [encode_event(rows[i], id=ids[i]) for i in range(n)]
    store = JoinStore(max_pending=n, max_bytes=2**40, event_fields=codec.fields)
    events = [(ids[i], rows[i], 0.5, i, i, "events", 0, i, values[i]) for i in range(n)]
    labels = [(ids[i], 1, n + i, "labels", 0, i) for i in range(n)]
    t0 = time.perf_counter_ns()
    for k in range(0, n, chunk):
        store.add_events(events[k:k + chunk])
    t1 = time.perf_counter_ns()
    for k in range(0, n, chunk):
        store.add_labels(labels[k:k + chunk])
    t2 = time.perf_counter_ns()
    assert store.counters["joined"] == n
    return (t1 - t0) / n, (t2 - t1) / n


def time_dict(ids: list[str], rows: list[dict]) -> tuple[float, float]:
    """ns per insert and per pop of a plain dict (the floor of a join)."""
    n, d = len(ids), {}
    t0 = time.perf_counter_ns()
    for i in range(n):
        d[ids[i]] = (rows[i], 0.5, i, i)
    t1 = time.perf_counter_ns()
    for i in range(n):
        d.pop(ids[i])
    t2 = time.perf_counter_ns()
    return (t1 - t0) / n, (t2 - t1) / n


class _Record:
    """A consumed record as the learner's labels path reads it (kafka-python's attributes)."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "value", "key")

    def __init__(self, topic: str, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.timestamp, self.value, self.key = (
            topic, 0, offset, offset, value, None)


def time_paths(ids: list[str], rows: list[dict], chunk: int = 500) -> tuple[float, float]:
    """µs per event of the labelled path and of the joined path, from message bytes, each on a fresh model.

    Labelled: decode ``{"x", "y", "id"}``, ``predict_learn_one``. Joined, as the learner does it: decode
    ``{"x", "id"}``, predict, :meth:`Labels.event <consumers.labels.Labels.event>` (the event and its
    decoded features kept); later, polled batches of ``chunk`` labels ``{"id", "y"}`` through
    :meth:`Labels.records` (decoded, joined) and :meth:`Labels.learn` (learned, delayed metrics kept), then
    :meth:`Labels.publish` per batch. No Kafka I/O in either: the join's share of the work.
    """
    from types import SimpleNamespace

    from consumers.labels import Labels
    from consumers.stats import LearnerStats

    n, ys = len(ids), [i % 2 for i in range(len(ids))]
    codec = JsonCodec()
    labelled_msgs = [encode_event(rows[i], y=ys[i], id=ids[i]) for i in range(n)]
    event_msgs = [encode_event(rows[i], id=ids[i]) for i in range(n)]
    event_records = [_Record("e", i, v) for i, v in enumerate(event_msgs)]
    label_records = [_Record("l", i, orjson.dumps({"id": ids[i], "y": ys[i]})) for i in range(n)]

    model = OnlineLogisticRegression()
    model.learn_one(rows[0], 1)  # both models know the features: scoring unseen ones takes a slow path
    decode = codec.decoder()
    t0 = time.perf_counter()
    for i in range(n):
        e = decode(labelled_msgs[i])
        model.predict_learn_one(e.x, e.y)
    labelled = (time.perf_counter() - t0) / n * 1e6

    model = OnlineLogisticRegression()
    model.learn_one(rows[0], 1)
    cfg = SimpleNamespace(labels_topic="l", label_id_field="id", label_y_field="y", label_ttl=1e9,
                          expired_policy="drop", max_pending=n, max_pending_bytes=2**40,
                          max_message_bytes=1 << 20, x_field="x", y_field="y", id_field="id")
    labels = Labels(cfg, LearnerStats())
    half = n // 2  # events then labels, half of them pending at a time
    t0 = time.perf_counter()
    for start in range(0, n + half, chunk):
        for i in range(start, min(start + chunk, n)):
            r = event_records[i]
            e = decode(r.value)
            p = model.predict_proba_one(e.x)[True]
            labels.event(r, e.id, e.x, p, model.n_samples_seen)
        first, last = max(start - half, 0), min(start + chunk - half, n)
        if last > first:
            labels.learn(model, labels.records(label_records[first:last], None), None)
            labels.publish()
    joined_path = (time.perf_counter() - t0) / n * 1e6
    assert labels.store.counters["joined"] == n, labels.store.counters
    return labelled, joined_path


def memory(ids: list[str], rows: list[dict]) -> tuple[float, float, float]:
    """Bytes per pending event as the learner keeps them (the record value and the features decoded from
    it, both made inside the measurement): held (tracemalloc) before the first ``to_state`` and after it
    (its output let go of), and estimated by the store."""
    codec = JsonCodec()
    decode = codec.decoder()
    values = [encode_event(rows[i], id=ids[i]) for i in range(len(ids))]
    store = JoinStore(max_pending=len(ids), max_bytes=2**40, event_fields=codec.fields)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(len(ids)):
        value = bytes(bytearray(values[i]))  # the client's copy
        store.add_event(ids[i], decode(value).x, 0.5, version=i, ts=i, topic="events", partition=0, offset=i,
                        record_value=value)
    held = tracemalloc.get_traced_memory()[0] - before
    state = store.to_state()
    del state
    packed = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held / len(ids), packed / len(ids), store.n_bytes / len(ids)


def _timed(fn: object) -> tuple[float, object]:
    """CPU seconds of ``fn()`` (the process's: the machine is shared) and what it returned."""
    gc.collect()  # a collection the allocations before would trigger is not the call's
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def _same(a: tuple, b: tuple) -> bool:
    return a[1] == b[1] and a[0].keys() == b[0].keys() and all(
        a[0][k].dtype == b[0][k].dtype and a[0][k].tobytes() == b[0][k].tobytes() for k in a[0])


def time_state(n: int, n_features: int, rounds: int, changes: int = 10_000) -> dict[str, float]:
    """Seconds for to_state of a store of n pending events (features JSON, one topic): its first call and
    one after ``changes`` changes (half joins of random pending events, half new events), each beside the
    reference on a twin store fed the same; from_state of that state; the state's bytes."""
    from tests.test_join_store import reference_state

    ids, rows = typical_rows(n + changes // 2, n_features, seed=n)
    best = dict.fromkeys(("first", "first_ref", "after", "after_ref", "load"), float("inf"))
    for r in range(rounds):
        store, twin = (JoinStore(max_pending=n, max_bytes=2**40) for _ in range(2))
        for s in (store, twin):
            for i in range(n):
                s.add_event(ids[i], rows[i], 0.5, version=i, ts=i, topic="events", partition=0, offset=i)
        first, state = _timed(store.to_state)
        first_ref, ref = _timed(lambda twin=twin: reference_state(twin))
        assert _same(state, ref)
        del state, ref
        rng = random.Random(r)
        joins = rng.sample(range(n), changes // 2)
        labels = [(ids[i], 1, n + k, "labels", 0, k) for k, i in enumerate(joins)]
        for s in (store, twin):
            s.add_labels(labels)
            for i in range(n, n + changes // 2):
                s.add_event(ids[i], rows[i], 0.5, version=i, ts=n + changes, topic="events", partition=0,
                            offset=i)
        after, state = _timed(store.to_state)
        after_ref, ref = _timed(lambda twin=twin: reference_state(twin))
        assert _same(state, ref)
        load, _ = _timed(lambda state=state: JoinStore.from_state(*state))
        for k, v in (("first", first), ("first_ref", first_ref), ("after", after), ("after_ref", after_ref),
                     ("load", load)):
            best[k] = min(best[k], v)
        best["size"] = sum(a.nbytes for a in state[0].values())
        del state, ref, store, twin
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the best one counts)")
    parser.add_argument("--features", type=int, default=20, help="float features per event")
    parser.add_argument("--state", default="10000,100000", help="pending events for to_state/from_state")
    args = parser.parse_args()

    ids, rows = typical_rows(args.n, args.features)
    best = {k: [float("inf")] * 2 for k in ("store", "batches", "dict", "paths")}
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit all contenders alike
        for name, fn in (("store", time_store), ("batches", time_batches), ("dict", time_dict),
                         ("paths", time_paths)):
            best[name] = [min(a, b) for a, b in zip(best[name], fn(ids, rows), strict=True)]
    (ev, lab), (ins, pop), (labelled, joined) = best["store"], best["dict"], best["paths"]
    evs, labs = best["batches"]
    print(f"{args.n} events of {args.features} float features, best of {args.rounds} rounds")
    print(f"  add_event (stored)      {ev:8.0f} ns   plain dict insert {ins:6.0f} ns  ({ev / ins:4.1f}x)")
    print(f"  add_label (joined)      {lab:8.0f} ns   plain dict pop    {pop:6.0f} ns  ({lab / pop:4.1f}x)")
    print(f"  add_events (stored, records kept), per event {evs:6.0f} ns; add_labels (joined) {labs:6.0f} ns"
          " (batches of 500)")
    print(f"  labelled path (decode, predict_learn_one)           {labelled:6.2f} µs/event")
    print(f"  joined path (decode, predict, keep; label, join, learn) {joined:6.2f} µs/event  "
          f"= {labelled / joined:.2f}x the labelled path's throughput")  # fmt: skip
    held, packed, estimate = memory(ids[:20_000], rows[:20_000])
    print(f"  memory per pending event: {held:.0f} bytes held (tracemalloc) before the first to_state, "
          f"{packed:.0f} after it; {estimate:.0f} estimated")
    for n in (int(s) for s in args.state.split(",")):
        t = time_state(n, args.features, args.rounds)
        print(f"  {n:>7} pending, CPU: to_state first call {t['first'] * 1e3:6.1f} ms (all packed anew "
              f"{t['first_ref'] * 1e3:6.1f} ms, {t['first_ref'] / t['first']:4.2f}x); after 10,000 changes "
              f"{t['after'] * 1e3:6.1f} ms (anew {t['after_ref'] * 1e3:6.1f} ms, "
              f"{t['after_ref'] / t['after']:4.1f}x); from_state {t['load'] * 1e3:6.1f} ms; "
              f"state {t['size'] / 2**20:5.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()

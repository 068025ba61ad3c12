"""How much the message codec costs on top of parsing: ``JsonCodec.decode`` vs plain ``orjson.loads``.

Decodes N typical messages (20 float features, a label, a string id; ~690 bytes each) with both, in the same
process, interleaved, best of R rounds (the machine is shared; the best round is the least disturbed), and
prints messages/s, the ratio and the codec's overhead per message. For reference it also times decoding plus
``encode_value`` on every value, i.e. what the codec would cost if it called the model's rule per value
instead of its type fast path.

    PYTHONPATH=. python bench/bench_codec.py [--n 200000] [--rounds 5] [--features 20]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import orjson

from stream_logreg.codec import Event, JsonCodec
from stream_logreg.features import encode_value


def typical_messages(n: int, n_features: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    names = [f"feature_{i:02d}" for i in range(n_features)]
    return [
        orjson.dumps(
            {"x": {k: rng.gauss(0.0, 1.0) for k in names}, "y": rng.randrange(2), "id": f"evt-{i:09d}"}
        )
        for i in range(n)
    ]


def rate(run: Callable[[list[bytes]], None], messages: list[bytes]) -> float:
    """Messages per second of one pass of ``run`` over ``messages``."""
    t0 = time.perf_counter()
    run(messages)
    return len(messages) / (time.perf_counter() - t0)


def run_loads(messages: list[bytes]) -> None:
    loads = orjson.loads
    for m in messages:
        loads(m)


def make_run_decode(codec: JsonCodec) -> Callable[[list[bytes]], None]:
    def run_decode(messages: list[bytes]) -> None:
        decode = codec.decode
        for m in messages:
            decode(m)

    return run_decode


def make_run_decode_encode_value(codec: JsonCodec) -> Callable[[list[bytes]], None]:
    def run(messages: list[bytes]) -> None:
        decode = codec.decode
        for m in messages:
            for k, v in decode(m).x.items():  # type: ignore[union-attr]
                encode_value(k, v)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per contender (the best one counts)")
    parser.add_argument("--features", type=int, default=20, help="float features per message")
    args = parser.parse_args()

    messages = typical_messages(args.n, args.features)
    codec = JsonCodec()
    assert all(isinstance(codec.decode(m), Event) for m in messages[:1000])
    contenders = {
        "orjson.loads": run_loads,
        "JsonCodec.decode": make_run_decode(codec),
        "decode + encode_value per value": make_run_decode_encode_value(codec),
    }
    rates = {name: 0.0 for name in contenders}
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit all contenders alike
        for name, run in contenders.items():
            rates[name] = max(rates[name], rate(run, messages))

    size = sum(map(len, messages)) / len(messages)
    print(f"{args.n} messages of {size:.0f} bytes ({args.features} float features, label, id), "
          f"best of {args.rounds} rounds")  # fmt: skip
    base = rates["orjson.loads"]
    for name, r in rates.items():
        print(f"  {name:34s} {r:12,.0f} msg/s  {1e6 / r:6.2f} µs/msg  {r / base:5.2f}x orjson.loads")
    overhead = 1e6 / rates["JsonCodec.decode"] - 1e6 / base
    print(f"codec overhead: {overhead:.2f} µs/msg; decode runs at {rates['JsonCodec.decode'] / base:.0%} "
          f"of plain orjson.loads")  # fmt: skip


if __name__ == "__main__":
    main()

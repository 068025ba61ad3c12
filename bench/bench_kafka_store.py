"""Save and restore time of the Kafka state store vs the directory store, for 10^4 and 10^6 weights.

The models are FTRL (w, z and n are saved: three float64 arrays) with every weight non-zero:
``vocab 1e4`` (a vocabulary of 10^4 features, listed in the manifest) and ``hash 2^20`` (1,048,576 hashed
weights, about 25 MB: 48 chunks of 512 KiB). For each, the median of ``--repeats`` runs of:

- ``save``: ``DirectoryStore.save`` (fsyncs included) and ``KafkaStore.save`` (one transaction: chunks,
  commit record, tombstones of the checkpoints beyond ``keep=2``; ``acks=all`` on a one-broker cluster);
- ``restore``: ``latest()`` of a store opened afresh (for Kafka: read the partition to its end, then read
  back the newest checkpoint's chunks, verify, ``restore``); the directory's files come from the page
  cache, the topic's from the broker's.

``ratio`` is Kafka / directory, both in this process on this machine. Run from the repository root::

    python bench/bench_kafka_store.py [--repeats 3] [--models vocab1e4,hash2^20]

A broker is started (scripts/kafka_broker.py) unless ``KAFKA_BOOTSTRAP_SERVERS`` names one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._kafka import kafka_bootstrap  # noqa: E402
from bench.bench_checkpoints import median_time  # noqa: E402
from consumers.state.kafka_store import KafkaStore  # noqa: E402
from stream_logreg import OnlineLogisticRegression, optim  # noqa: E402
from stream_logreg.checkpoints import DirectoryStore  # noqa: E402

MODELS = {"vocab1e4": (10**4, None), "hash2^20": (3 << 20, 20)}


def build(name: str, seed: int = 0) -> OnlineLogisticRegression:
    """An FTRL model with (almost) every weight and optimizer state entry non-zero."""
    columns, n_bits = MODELS[name]
    model = OnlineLogisticRegression(optimizer=optim.FTRL(), n_bits=n_bits)
    model.learn_batch(np.random.default_rng(seed).standard_normal((2, columns)), np.array([0.0, 1.0]))
    return model


def run(bootstrap: str, names: list[str], repeats: int) -> None:
    print(f"median of {repeats} runs; seconds; ratio = kafka / directory")
    print(f"{'model':<10} {'weights':>9} {'MB':>6} {'dir save':>9} {'kafka save':>10} {'ratio':>6} "
          f"{'dir restore':>11} {'kafka restore':>13} {'ratio':>6}")
    for name in names:
        model = build(name)
        metadata = {"offsets": {f"events:{p}": 10**9 + p for p in range(12)}}
        topic = f"bench-state-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory() as tmp:
            directory = DirectoryStore(tmp, keep=2)
            dir_save = median_time(lambda: directory.save(model, metadata), repeats)  # noqa: B023
            dir_restore = median_time(lambda: DirectoryStore(tmp, keep=2).latest(), repeats)  # noqa: B023
        with KafkaStore(bootstrap, "bench", topic=topic, keep=2) as store:
            kafka_save = median_time(lambda: store.save(model, metadata), repeats)  # noqa: B023
            size = store.list()[-1].size
        with KafkaStore(bootstrap, "bench", topic=topic, keep=2) as reader:
            kafka_restore = median_time(reader.latest, repeats)
            checkpoint = reader.latest()
        assert checkpoint is not None and checkpoint.model.coef.tobytes() == model.coef.tobytes()
        print(
            f"{name:<10} {model.n_features:>9,} {size / 1e6:>6.1f} {dir_save:>9.3f} {kafka_save:>10.3f} "
            f"{kafka_save / dir_save:>6.1f} {dir_restore:>11.3f} {kafka_restore:>13.3f} "
            f"{kafka_restore / dir_restore:>6.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # kafka-python 3.0's importlib use
    with kafka_bootstrap() as bootstrap:
        run(bootstrap, args.models.split(","), args.repeats)


if __name__ == "__main__":
    main()

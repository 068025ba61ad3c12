"""The labelled events read but not learned yet: the next mini-batch, in stream order across polls and
partitions (``batch_size`` > 1).

The rows are a compiled :class:`stream_logreg._batch.MiniBatch` (their columns, values and labels, ready
for the model's mini-batch step); beside them only the *runs*: consecutive rows of one partition out of one
list of polled records, each with the records list, its first row and that row's record made neutral. So
an event costs no Python object of its own while it waits: its record is looked up (and made neutral) only
for a dead letter or a prediction to publish, and the events of each partition are counted per run.

What the checkpoint needs of it (:mod:`consumers.state.checkpointing`): the offset of the first waiting
event of each partition (:meth:`Buffer.first_offsets`, not in the model yet: the checkpoint covers the
events before it), and forgetting the events of partitions that go (:meth:`Buffer.drop`).

>>> from kafka import TopicPartition
>>> from stream_logreg import OnlineLogisticRegression
>>> from stream_logreg._json import RowDecoder
>>> from stream_logreg.codec import JsonCodec
>>> from collections import namedtuple
>>> R = namedtuple("R", "topic partition offset")
>>> model, rows, buffer = OnlineLogisticRegression(), RowDecoder(JsonCodec()), Buffer(4)
>>> model.learn_one({"a": 1.0}, True)
>>> t0, t1 = TopicPartition("t", 0), TopicPartition("t", 1)
>>> records = [R("t", 0, 7), R("t", 0, 8)]
>>> values = [b'{"x": {"a": 1}, "y": 1}', b'{"x": {"a": 2}, "y": 0}']
>>> buffer.take(rows, values, 0, model.features, t0, records, lambda r: r)
2
>>> buffer.add({"b": 3}, 1, 0, t1, [R("t", 1, 40)], lambda r: r)
>>> len(buffer), sorted((tp.partition, o) for tp, o in buffer.first_offsets().items())
(3, [(0, 7), (1, 40)])
>>> [(tp.partition, k) for tp, k in buffer.counts()]
[(0, 2), (1, 1)]
>>> buffer.drop({t0})
>>> [r.offset for r in buffer.records(lambda r: r)]
[40]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from stream_logreg._batch import MiniBatch

__all__ = ["Buffer"]


class Buffer:
    """The next mini-batch of at most ``size`` labelled events and where they came from (module docs)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.batch = MiniBatch(size)
        # (tp, records, first row, the first row's record made neutral), in row order
        self.runs: list[tuple[Any, list, int, Any]] = []

    def __len__(self) -> int:
        return len(self.batch)

    def clear(self) -> None:
        self.batch.clear()
        self.runs.clear()

    def take(self, rows: Any, values: list, start: int, space: Any, tp: Any, records: list,
             view: Callable[[Any], Any]) -> int:
        """Add the labelled messages of the common shape ``values[start:]`` (of partition ``tp``, whose
        records are ``records``) until the batch is full or one declines (see ``MiniBatch.take``); returns
        the index of the first value not taken."""
        m = len(self.batch)
        i = self.batch.take(rows, values, start, space)
        if i > start:
            self._run(m, start, tp, records, view)
        return i

    def add(self, x: dict, y: Any, source: int, tp: Any, records: list, view: Callable[[Any], Any]) -> None:
        """Add the labelled event ``x``, ``y`` of ``records[source]`` (of partition ``tp``) as a dict row."""
        m = len(self.batch)
        self.batch.add(x, y, source)
        self._run(m, source, tp, records, view)

    def _run(self, row: int, source: int, tp: Any, records: list, view: Callable[[Any], Any]) -> None:
        runs = self.runs
        if not runs or runs[-1][1] is not records:
            runs.append((tp, records, row, view(records[source])))

    def _spans(self) -> Iterator[tuple[Any, list, int, int]]:
        """(tp, records, first row, end row) of each run."""
        runs, m = self.runs, len(self.batch)
        for k, (tp, records, first, _) in enumerate(runs):
            yield tp, records, first, runs[k + 1][2] if k + 1 < len(runs) else m

    def first_offsets(self) -> dict[Any, int]:
        """Per partition with events waiting, the offset of its first one."""
        offsets: dict[Any, int] = {}
        for tp, _, _, first in self.runs:
            if tp not in offsets:
                offsets[tp] = first.offset
        return offsets

    def counts(self) -> list[tuple[Any, int]]:
        """(tp, how many events) of each run, in order."""
        return [(tp, end - first) for tp, _, first, end in self._spans()]

    def records(self, view: Callable[[Any], Any]) -> Iterator[Any]:
        """The record of each waiting event made neutral (``view``), in order."""
        sources = self.batch.sources()
        for _, records, first, end in self._spans():
            for j in range(first, end):
                yield view(records[sources[j]])

    def drop(self, partitions: set) -> None:
        """Forget the events of ``partitions``; the others keep their order."""
        if not any(tp in partitions for tp, *_ in self.runs):
            return
        keep: list[bool] = []
        runs, kept = [], 0
        for (tp, records, first, end), run in zip(list(self._spans()), self.runs, strict=True):
            gone = tp in partitions
            if not gone:
                runs.append((tp, records, kept, run[3]))
                kept += end - first
            keep += [not gone] * (end - first)
        self.batch.keep(keep)
        self.runs = runs

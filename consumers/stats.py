"""What a running learner counts: :class:`LearnerStats`, read consistently from any thread.

The loop updates the counters once per polled batch under ``stats.lock``; readers (the metrics HTTP thread)
take a :meth:`LearnerStats.snapshot`, a plain JSON-able dict.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from stream_logreg.codec import Reason

__all__ = ["LearnerStats", "progressive_metrics"]

_EPS = 1e-15


def progressive_metrics(ps: list[float], ys: list[int]) -> tuple[float, int]:
    """Progressive validation of the predictions ``ps`` of labels ``ys``: (Σ log loss, with the probability
    of the true class clipped to >= ε; how many are right, p > 0.5 meaning 1 — the
    model's own ``predict_one`` and River's ``metrics.Accuracy``). Vectorised: the loop only
    collects."""
    p = np.array(ps, dtype=np.float64)
    y = np.array(ys, dtype=bool)
    loss = -np.log(np.maximum(np.where(y, p, 1.0 - p), _EPS)).sum()
    hits = np.count_nonzero(np.where(y, p > 0.5, p <= 0.5))
    return float(loss), int(hits)


class LearnerStats:
    """Counters and gauges of a running learner; :meth:`snapshot` reads them consistently from any thread.

    The loop updates them once per polled batch under :attr:`lock`; readers (an HTTP metrics thread) take
    a :meth:`snapshot`, a plain dict.
    """

    def __init__(self, window: int = 10_000) -> None:
        self.lock = threading.Lock()
        self.started_at = time.time()
        self.running = False
        self.consumed = 0  # messages polled and processed
        self.learned = 0  # labelled events learned into the model (this process)
        self.scored = 0  # unlabelled events scored
        self.predicted_labelled = 0  # labelled events learned, each predicted just before (the metrics)
        self.rejected: dict[str, int] = {r.value: 0 for r in Reason}
        self.dead_lettered = 0
        self.predictions_published = 0
        self.produce_failures = 0  # failed sends, re-sent or not
        self.output_failures: dict[str, int] = {}  # topic -> failures that dropped records or the topic
        self.output_dropped: dict[str, int] = {}  # topic -> records given up on (see consumers.outputs)
        self.output_healthy = True  # every output topic takes records
        self.connected = False  # the learner has reached the brokers (and not lost its group coordinator)
        self.connection_failures = 0  # failed connection attempts, and losses of the connection
        self.offset_resets = 0  # checkpoint offsets found beyond the end of the log (topic re-created)
        self.checkpoints_written = 0
        self.checkpoint_failures = 0
        self.last_checkpoint_time: float | None = None  # wall clock
        self.last_checkpoint_duration: float | None = None  # seconds
        self.last_checkpoint_id: str | None = None
        self.commits = 0
        self.commit_failures = 0
        self.poll_errors = 0
        self.last_poll_time: float | None = None  # wall clock of the last poll, answered or failed (liveness)
        self.rebalances = 0
        self.assigned: list[str] = []
        self.positions: dict[str, int] = {}  # "topic:partition" -> next offset to read
        self.highwaters: dict[str, int] = {}  # "topic:partition" -> highwater (from fetch responses)
        self.n_samples_seen = 0
        self.n_features = 0
        self.buffered = 0  # labelled events waiting for a full mini-batch
        self.log_loss_total = 0.0  # progressive validation, since start
        self.correct_total = 0
        # Delayed labels (consumers.labels): the predictions made at scoring time of the events joined with
        # their label, judged when it came; the join store's counters and gauges (JoinStore.counters).
        self.delayed_predicted = 0
        self.delayed_log_loss_total = 0.0
        self.delayed_correct_total = 0
        self.join: dict[str, int] = {}
        self.join_bytes = 0
        self.join_latency_buckets_ms: list[int] = []
        self.join_latency_counts: list[int] = []
        self.held_back = 0  # partitions paused because they read ahead of their partner (consumers.pacing)
        # Rolling window over the last ~``window`` labelled events, kept per processed chunk (a polled
        # batch of one partition) as (events, log loss sum, correct) so the hot loop only sums.
        self._window = window
        self._chunks: deque[tuple[int, float, int]] = deque()
        self._window_n = 0
        self._window_loss = 0.0
        self._window_hits = 0

    def _add_chunk(self, n: int, loss: float, hits: int) -> None:
        """Record ``n`` labelled predictions (lock held); drop the oldest chunks beyond the window."""
        if not n:
            return
        self.predicted_labelled += n
        self.log_loss_total += loss
        self.correct_total += hits
        self._chunks.append((n, loss, hits))
        self._window_n += n
        self._window_loss += loss
        self._window_hits += hits
        while self._window_n - self._chunks[0][0] >= self._window:
            n0, loss0, hits0 = self._chunks.popleft()
            self._window_n -= n0
            self._window_loss -= loss0
            self._window_hits -= hits0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of everything, with the rolling metrics computed, as a JSON-able dict."""
        with self.lock:
            window = (self._window_n, math.fsum(c[1] for c in self._chunks), self._window_hits)
            lag = {
                k: max(0, self.highwaters[k] - pos)
                for k, pos in self.positions.items()
                if k in self.highwaters
            }
            snap = {
                k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                for k, v in vars(self).items()
                if not k.startswith("_") and k != "lock"
            }
        snap["rejected_total"] = sum(snap["rejected"].values())
        snap["lag"] = lag
        n_window, loss_window, hits_window = window
        snap["rolling_window"] = n_window
        snap["rolling_log_loss"] = loss_window / n_window if n_window else None
        snap["rolling_accuracy"] = hits_window / n_window if n_window else None
        n = snap["predicted_labelled"]
        snap["log_loss"] = snap["log_loss_total"] / n if n else None
        snap["accuracy"] = snap["correct_total"] / n if n else None
        n = snap["delayed_predicted"]
        snap["delayed_log_loss"] = snap["delayed_log_loss_total"] / n if n else None
        snap["delayed_accuracy"] = snap["delayed_correct_total"] / n if n else None
        snap["uptime_seconds"] = time.time() - snap["started_at"]
        return snap

"""One polled batch learned on a worker thread while the loop polls the next: :class:`Pipeline`.

The learner's loop hands batch k to :meth:`Pipeline.submit` and goes back to ``poll()``; the worker runs the
batch's processing, which holds the GIL except in the compiled pass (``stream_logreg._stream.learn_values``
learns the runs of messages of the common shape with the GIL released), so that on a machine with two cores
the client's poll (confluent-kafka builds its messages with the GIL held; kafka-python's poll is Python) and
the learning overlap. :meth:`Pipeline.submit` returns only once the worker has taken the batch up (with
batch size 1; the mini-batch path holds the GIL through its batch, so waiting for it would only delay the
poll): left to poll at once, the loop would hold the GIL through the next poll (confluent-kafka's
``consume`` keeps it for the 2,000 messages it builds, ~1.3 ms) while the worker, woken, waited for it before
its GIL-free pass could start — the poll and the learning one after the other, not side by side.

:meth:`Pipeline.hand_over` is the same hand-over made while the batch before is still in flight: the worker
takes the new batch up the moment it has finished the one before (it never waits for the loop, nor for a
wake-up: the loop's work between two batches is done while the worker learns), and the call returns once it
has, so that one batch at a time is in flight after it as after :meth:`~Pipeline.submit`. The learner hands
over this way only what it may hand over before the batch in flight is complete (nothing due, nothing to seek:
``Learner._ready``).

What the loop and its callbacks keep to (the checkpoint/offset contract, /work/shared/design.md):

- everything that reads or changes the learner's state besides the worker — the rebalance callbacks, the
  next iteration's checkpoint and commit, seeks, the group model's sync, the transactions, the shutdown —
  first :meth:`~Pipeline.wait`\\ s for the batch in flight, so that it is complete (model, positions, learned
  counts, stats) before anything is checkpointed, committed or handed off;
- an exception of the worker is raised on the loop's thread by :meth:`~Pipeline.complete` (a callback's
  :meth:`~Pipeline.wait` does not raise it: the loop does, right after its ``poll()``), and logged by
  :meth:`~Pipeline.close` if the loop ended on another one;
- every wait is bounded by one batch's processing, which never waits for the thread that waits for it (the
  callbacks run inside the loop's own ``poll()``, on its thread or on kafka-python's IO thread, while the
  loop is parked; the worker needs neither).

>>> seen = []
>>> pipeline = Pipeline(seen.append)
>>> pipeline.submit("batch 1")
>>> pipeline.complete()
>>> pipeline.close(); seen
['batch 1']
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


class Pipeline:
    """Runs ``work(batch)`` on a worker thread, one batch at a time.

    Parameters
    ----------
    work
        What to do with a batch; its exception is kept and raised by :meth:`complete`.
    name
        The worker thread's name.
    wait_taken
        :meth:`submit` returns only once the worker has taken the batch up: for work that soon releases the
        GIL (the compiled pass); work that holds it would only keep the caller waiting for it.
    """

    def __init__(self, work: Callable[[Any], None], name: str = "learner-batch", wait_taken: bool = True
                 ) -> None:
        self.work = work
        self.name = name
        self.wait_taken = wait_taken
        self._cond = threading.Condition()
        self._job: Any = None  # handed over, not taken yet
        self._busy = False  # handed over and not finished
        self._closed = False
        self._error: BaseException | None = None
        self._queued = False  # a batch handed over while the one before was in flight, not taken yet
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A batch is in flight."""
        return self._busy

    def submit(self, batch: Any) -> None:
        """Hand ``batch`` to the worker (after :meth:`complete`: one batch at a time); with
        :attr:`wait_taken`, return once the worker has taken it up."""
        if batch is None:
            raise ValueError("a batch, not None")
        with self._cond:
            if self._busy or self._closed:
                raise RuntimeError("the pipeline is busy or closed")
            self._job, self._busy = batch, True
            self._cond.notify_all()
            while self.wait_taken and self._job is not None and self._thread.is_alive():
                self._cond.wait(0.1)

    def hand_over(self, batch: Any) -> None:
        """Hand ``batch`` to the worker to take up once the batch in flight (if any) is complete, and return
        when it has taken it up (with :attr:`wait_taken` only: one batch in flight when this returns).

        If the batch in flight raised, ``batch`` is dropped (never run) and the exception raised here, as
        :meth:`complete` raises it."""
        if batch is None:
            raise ValueError("a batch, not None")
        if not self.wait_taken:
            raise RuntimeError("hand_over() needs wait_taken: use complete() and submit()")
        with self._cond:
            if self._closed or self._job is not None:
                raise RuntimeError("the pipeline is closed or a batch is waiting already")
            if not self._busy and self._error is not None:
                error, self._error = self._error, None
                raise error
            self._job, self._busy, self._queued = batch, True, True
            self._cond.notify_all()
            while self._job is not None and self._thread.is_alive():
                self._cond.wait(0.1)
            dropped, self._queued = self._queued, False
        if dropped:  # the batch before raised: this one was not run
            self.complete()
            raise RuntimeError("the batch in flight failed and the next was dropped")  # complete() raised

    def wait(self) -> None:
        """Return once no batch is in flight (at once if none). Does not raise the batch's exception."""
        if not self._busy or threading.current_thread() is self._thread:
            return
        with self._cond:
            while self._busy:
                self._cond.wait()

    def complete(self) -> None:
        """:meth:`wait`, then raise here the exception the batch raised, if it did."""
        self.wait()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait for the batch in flight and stop the worker; an exception nobody raised is logged."""
        self.wait()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            log.error("processing a batch failed", exc_info=error)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while self._job is None and not self._closed:
                    cond.wait()
                if self._job is None:
                    return
                job, self._job = self._job, None
                self._queued = False  # taken up
                cond.notify_all()  # submit() returns
            try:
                self.work(job)
            except BaseException as exc:  # raised on the loop's thread by complete()
                self._error = exc
            finally:
                with cond:
                    if self._job is None:
                        self._busy = False
                        cond.notify_all()
                    elif self._error is not None:  # handed over behind a batch that failed: dropped
                        self._job, self._busy = None, False
                        cond.notify_all()
                    # else the next batch is waiting (still busy): taking it up notifies (no wake-up of
                    # the loop in between only to find it still waiting)

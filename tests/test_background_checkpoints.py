"""Periodic checkpoints written off the loop (consumers.state.checkpointing): on a real broker, with a
directory store whose writes wait for the test, a commit is never made before the checkpoint it names is
durable, and a write that fails in the background is reported and its commit withheld."""

from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from polling import wait_for
from test_consumer import Running, latest, make_config, make_events, offline, produce, same_model

from consumers import Learner
from stream_logreg.checkpoints import DirectoryStore


class GatedStore(DirectoryStore):
    """A directory store whose every save waits for a permit from the test (``allow(n)``); a save given a
    permit while ``fail`` is set raises it instead of writing. ``durable`` lists ``(id, offsets)`` of the
    checkpoints written, in order, as soon as they are on disk; ``threads`` the thread of each save."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, keep=None)
        self._permits = threading.Semaphore(0)
        self.entered = 0  # saves begun (waiting for a permit, or past it)
        self.fail: BaseException | None = None
        self.durable: list[tuple[str, dict]] = []
        self.threads: list[str] = []
        self._counting = threading.Lock()

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self._permits.release()

    def save(self, model: Any, metadata: dict | None = None, extras: dict | None = None) -> str:
        with self._counting:
            self.entered += 1
            self.threads.append(threading.current_thread().name)
        if not self._permits.acquire(timeout=120):
            raise TimeoutError("the test gave no permit to write")
        if self.fail is not None:
            raise self.fail
        cid = super().save(model, metadata, extras)
        with self._counting:
            self.durable.append((cid, dict((metadata or {})["offsets"])))
        return cid


def group_offsets(bootstrap: str, group: str) -> dict[str, tuple[int, str]]:
    """``{"topic:partition": (offset, metadata)}`` committed by ``group`` (empty: nothing yet)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {f"{tp.topic}:{tp.partition}": (om.offset, (om.metadata or "").removesuffix("\x00"))
            for tp, om in offsets.items() if om is not None and om.offset >= 0}


def start_gated(bootstrap: str, topic: str, tmp_path: Path, kafka_client: str, n: int,
                fail: BaseException | None = None) -> tuple[list[bytes], str, str, GatedStore, Running]:
    """``n`` events on ``topic``, and a learner on them over a :class:`GatedStore` (checkpoints every 500):
    (the events, the group, the partition's key, the store, the running learner)."""
    values = make_events(n, seed=n)
    produce(bootstrap, topic, values)
    cfg = make_config(bootstrap, topic, tmp_path / "ckpt", max_poll_records=100,
                      checkpoint_every_messages=500, kafka_client=kafka_client)
    store = GatedStore(tmp_path / "ckpt")
    store.fail = fail
    return values, cfg.group_id, f"{topic}:0", store, Running(Learner(cfg, store=store))


def polled_after(r: Running, t: float) -> bool:
    """The loop went round (polled, then ticked) after wall-clock time ``t``."""
    return (r.stats()["last_poll_time"] or 0) > t + 0.3  # a poll begun after t, and its tick done


@pytest.mark.kafka
def test_a_commit_never_precedes_the_durable_checkpoint_it_names(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str
) -> None:
    values, group, key, store, r = start_gated(kafka_bootstrap, kafka_topic(1), tmp_path, kafka_client, 1500)
    try:
        # the first periodic checkpoint is being written, and the loop learns on meanwhile
        wait_for(lambda: store.entered >= 1, 60, "the first checkpoint's write")
        assert store.threads[0] != r.thread.name  # written off the consuming thread
        wait_for(lambda: r.stats()["learned"] >= 1000, 60, "learning on while the checkpoint is written")
        assert group_offsets(kafka_bootstrap, group) == {}  # nothing durable: nothing committed
        store.allow()
        first = wait_for(lambda: group_offsets(kafka_bootstrap, group).get(key), 60, "the first commit")
        assert store.durable and first == (store.durable[0][1][key], store.durable[0][0])
        # the second one is in flight while the loop goes round: the commit stays the first one's
        wait_for(lambda: store.entered >= 2 and r.stats()["consumed"] == len(values), 60, "the 2nd write")
        now = time.time()
        wait_for(lambda: polled_after(r, now), 30, "the loop going round with a write in flight")
        assert len(store.durable) == 1
        assert group_offsets(kafka_bootstrap, group)[key] == first
        store.allow()
        second = wait_for(lambda: (o := group_offsets(kafka_bootstrap, group).get(key)) != first and o, 60,
                          "the second commit")
        assert len(store.durable) == 2 and second == (store.durable[1][1][key], store.durable[1][0])
        assert first[0] < second[0] < len(values)
        store.allow(10)  # the final checkpoint
        r.stop()
    finally:
        store.allow(10)
        if r.thread.is_alive():
            r.stop()
    ckpt = latest(tmp_path / "ckpt")
    expected, _ = offline(values, 1)
    assert same_model(ckpt.model, expected) and same_model(r.learner.model, expected)
    assert ckpt.metadata["offsets"] == {key: len(values)}
    assert group_offsets(kafka_bootstrap, group)[key] == (len(values), ckpt.id)
    snap = r.learner.stats.snapshot()
    assert snap["checkpoint_failures"] == 0 and snap["commit_failures"] == 0
    assert snap["checkpoints_written"] == len(store.durable) == 3


@pytest.mark.kafka
def test_a_background_write_failure_is_reported_and_its_commit_withheld(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="consumers")
    values, group, key, store, r = start_gated(kafka_bootstrap, kafka_topic(1), tmp_path, kafka_client, 1000,
                                               fail=OSError(errno.ENOSPC, "No space left on device"))
    try:
        wait_for(lambda: store.entered >= 1, 60, "the first checkpoint's write")
        store.allow()  # ... which fails
        wait_for(lambda: r.stats()["checkpoint_failures"] >= 1, 60, "the failure counted")
        failed = [rec for rec in caplog.records if rec.getMessage().startswith("writing a checkpoint to")]
        assert failed and failed[0].levelno == logging.ERROR
        assert isinstance(failed[0].exc_info[1], OSError) and failed[0].exc_info[1].errno == errno.ENOSPC
        # tried again (its events are still to be checkpointed), and meanwhile nothing is committed
        wait_for(lambda: store.entered >= 2, 60, "the checkpoint written again")
        now = time.time()
        wait_for(lambda: polled_after(r, now), 30, "the loop going round")
        assert group_offsets(kafka_bootstrap, group) == {} and not store.durable
        assert r.stats()["checkpoints_written"] == 0 and r.stats()["commits"] == 0
        store.fail = None
        store.allow()
        done = wait_for(lambda: group_offsets(kafka_bootstrap, group).get(key), 60, "the commit")
        assert done == (store.durable[0][1][key], store.durable[0][0])
        store.allow(10)
        r.stop()
    finally:
        store.fail = None
        store.allow(10)
        if r.thread.is_alive():
            r.stop()
    expected, _ = offline(values, 1)
    assert same_model(latest(tmp_path / "ckpt").model, expected)
    assert group_offsets(kafka_bootstrap, group)[key][0] == len(values)
    assert r.learner.stats.snapshot()["checkpoint_failures"] == 1

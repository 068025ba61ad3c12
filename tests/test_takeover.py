"""``consumers.state.takeover.find_orphans``: which lost member's state a new member continues.

The real-broker tests (``test_state_kafka.py``, ``test_group_model.py``) take states over end to end; these
hold the decision itself to its rules on every combination of metadata, live members and held keys.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.state.checkpointing import StateRef
from consumers.state.takeover import TakeOver, find_orphans

KEYS, MEMBERS = ["mine", "k1", "k2", "k3"], ["me", "m1", "m2", "m3"]


def ref(key: str, member: str, orphan: tuple[str, str] | None = None) -> StateRef:
    return StateRef(key, "0" * 20, member, orphan)


def refuse(*_: object) -> set[str]:
    raise AssertionError("a look-up of the group that was not needed")


def test_own_state_only_costs_no_look_up_and_clears_the_marks() -> None:
    refs = {0: ref("mine", "me"), 1: ref("k1", "me"), 2: ref("mine", "m1", ("mine", "m2"))}
    assert find_orphans(refs, "mine", "me", refuse, refuse) == TakeOver({0: None, 1: None, 2: None}, None)


def test_a_lost_writer_is_taken_over_by_the_partitions_it_covers_most() -> None:
    refs = {0: ref("k1", "m1"), 1: ref("k2", "m2"), 2: ref("k2", "m2"), 3: ref("mine", "me")}
    found = find_orphans(refs, "mine", "me", lambda: {"me"}, lambda live: set())
    assert found == TakeOver({0: "k1@m1", 1: "k2@m2", 2: "k2@m2", 3: None}, "k2")


def test_a_state_a_live_member_writes_is_not_an_orphan() -> None:
    refs = {0: ref("k1", "m1"), 1: ref("k2", "m2")}
    found = find_orphans(refs, "mine", "me", lambda: {"me", "m3"},
                         lambda live: {"k2"} if "m3" in live else set())
    assert found == TakeOver({0: "k1@m1", 1: None}, "k1")


def test_a_mark_is_followed_only_when_no_state_is_named_directly() -> None:
    marked = {0: ref("k1", "m1", ("k3", "m3")), 1: ref("k1", "m1", ("k3", "m3"))}
    # m1 is alive: k1 is not an orphan, the mark k3@m3 is
    assert find_orphans(marked, "mine", "me", lambda: {"m1"}, lambda live: {"k1"}) == TakeOver(
        {0: "k3@m3", 1: "k3@m3"}, "k3")
    # m1 is gone too: its own state comes first
    assert find_orphans(marked, "mine", "me", lambda: set(), lambda live: set()) == TakeOver(
        {0: "k1@m1", 1: "k1@m1"}, "k1")


def test_a_mark_is_carried_on_where_the_named_state_is_continued_by_another() -> None:
    # k1's writer is gone but a live member continues k1; the orphan k3 it marked is nobody's yet
    refs = {0: ref("k1", "m1", ("k3", "m3"))}
    assert find_orphans(refs, "mine", "me", lambda: {"me", "m2"}, lambda live: {"k1"}) == TakeOver(
        {0: "k3@m3"}, "k3")


def test_live_writers_and_no_mark_change_nothing() -> None:
    refs = {0: ref("k1", "m1"), 1: ref("k2", "m2", ("k3", "m3"))}
    assert find_orphans(refs, "mine", "me", lambda: {"m1", "m2", "m3"}, refuse) == TakeOver({}, None)


refs_st = st.dictionaries(
    st.integers(0, 7),
    st.builds(ref, st.sampled_from(KEYS), st.sampled_from(MEMBERS),
              st.none() | st.tuples(st.sampled_from(KEYS), st.sampled_from(MEMBERS))),
    max_size=8,
)


@settings(max_examples=500, deadline=None)
@given(refs=refs_st, live=st.sets(st.sampled_from(MEMBERS)), held=st.sets(st.sampled_from(KEYS)))
def test_the_rules_hold_for_any_metadata(refs: dict, live: set, held: set) -> None:
    calls = Counter()

    def live_members() -> set[str]:
        calls["live"] += 1
        return set(live)

    def held_keys(members: set[str]) -> set[str]:
        calls["held"] += 1
        assert members == live
        return set(held)

    found = find_orphans(refs, "mine", "me", live_members, held_keys)
    assert calls["live"] <= 1 and calls["held"] <= 1
    assert set(found.marks) <= set(refs)
    for tp, mark in found.marks.items():
        if mark is not None:
            key, member = mark.split("@")
            r = refs[tp]
            # a mark names the partition's own lost writer, or the orphan its metadata marks
            assert (key, member) in {(r.key, r.member), r.orphan}
            assert key != "mine" and member not in live and key not in held
    if found.key is not None:
        assert found.key != "mine" and found.key not in held
        assert not found.marks or any(m and m.startswith(found.key + "@") for m in found.marks.values())
        named = Counter(r.key for r in refs.values() if r.key != "mine" and r.member != "me"
                        and r.member not in live and r.key not in held)
        if named:  # the state named directly covering the most partitions
            assert named[found.key] == max(named.values())
    elif calls["held"]:
        # nobody to take over: every partition's own writer and mark are alive, held, or this member's
        for r in refs.values():
            assert not (r.key != "mine" and r.member != "me" and r.member not in live and r.key not in held)

"""Which lost member's state a new member continues (the Kafka state store): :func:`find_orphans`.

With ``--state-store kafka`` every committed offset's metadata names the state that holds the events before
it and the member that wrote it (``<state key>/<checkpoint>@<member>``, :func:`~consumers.state.
checkpointing.parse_ref`), and maybe a lost state that covered the partition before
(``;orphan=<key>@<member>``). A member that crashed for good leaves its state key behind: its partitions go to
the survivors, who start at its committed offsets, and what it learned would be lost with it unless someone
continues its state. A state whose last writer is no longer in the group and that no live member writes
(none of the group's committed offsets names it with a live writer) is an **orphan**.

On each assignment the learner asks :func:`find_orphans` what the new partitions' metadata says:

- a *fresh* member (nothing learned, no state of its own) takes over the orphan covering most of its new
  partitions (named by the metadata directly first, then by an ``orphan`` mark): opening that store fences
  the lost member (a zombie's next transaction fails) and its newest checkpoint becomes this member's model;
- a member that is not fresh keeps its own model and marks the partitions with the orphan in its commits,
  so that a fresh member given them later (a replacement that joined after the group had expired the lost
  member) still finds and continues the lost state.

The decision is a pure function of the metadata and two look-ups of the group (its live members, and the
state keys its committed offsets name with a live writer), made lazily: most assignments name only this
member's own state, and cost no request.

>>> from consumers.state.checkpointing import parse_ref
>>> refs = {"p0": parse_ref("lost/00000000000000000009@host-a"),
...         "p1": parse_ref("mine/00000000000000000003@host-b")}
>>> find_orphans(refs, "mine", "host-b", lambda: {"host-b"}, lambda live: set())
TakeOver(marks={'p0': 'lost@host-a', 'p1': None}, key='lost')
>>> find_orphans(refs, "mine", "host-b", lambda: {"host-a", "host-b"}, lambda live: {"lost"})
TakeOver(marks={}, key=None)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from consumers.state.checkpointing import StateRef

__all__ = ["TakeOver", "find_orphans"]


class TakeOver(NamedTuple):
    """What :func:`find_orphans` found: ``marks``, per partition whose mark changes, the orphan to name in
    its commits (``"<key>@<member>"``) or None (no mark any more); ``key``, the orphan a fresh member takes
    over (the one covering most of the partitions), or None."""

    marks: dict[Any, str | None]
    key: str | None


def find_orphans(refs: Mapping[Any, StateRef], mine: str, me: str, live_members: Callable[[], set[str]],
                 held_keys: Callable[[set[str]], set[str]]) -> TakeOver:
    """The orphans the partitions' :class:`StateRef` ``refs`` name, for the member ``me`` whose state key is
    ``mine``: ``live_members()`` gives the group's members, ``held_keys(live)`` the state keys the group's
    committed offsets name with a writer in ``live``; each is called only when ``refs`` name some other
    state (the module's docstring)."""
    if not any((r.key != mine and r.member != me) or (r.orphan and r.orphan[0] != mine)
               for r in refs.values()):
        return TakeOver(dict.fromkeys(refs), None)
    live = live_members()
    named: dict[Any, tuple[str, str]] = {}
    marked: dict[Any, tuple[str, str]] = {}
    for tp, r in refs.items():
        if r.key != mine and r.member not in live and r.member != me:
            named[tp] = (r.key, r.member)
        if r.orphan and r.orphan[0] != mine and r.orphan[1] not in live:
            marked[tp] = r.orphan
    if not (named or marked):
        return TakeOver({}, None)
    held = held_keys(live)
    marks: dict[Any, str | None] = {}
    for tp in refs:  # the state named directly, else the one marked, if nobody alive continues it
        found = next((f for f in (named.get(tp), marked.get(tp)) if f is not None and f[0] not in held), None)
        marks[tp] = None if found is None else "@".join(found)
    candidates = (Counter(k for k, _ in named.values() if k not in held)
                  or Counter(k for k, _ in marked.values() if k not in held))
    return TakeOver(marks, next((k for k, _ in candidates.most_common(1)), None))

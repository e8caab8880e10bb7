"""The reassembly buffer: ordering, duplicates, supersession, eviction, timeouts, restart, keys."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.reassembly import (
    Assembled,
    Fragment,
    Incomplete,
    PartKey,
    ReassemblyBuffer,
)
from bridge.core.store import StoredPart

KEY = PartKey("acme", "Shop|Co", "4915112345678", 42)
T0 = 1_700_000_000.0


def frag(
    seqnum: int,
    total: int = 3,
    *,
    key: PartKey = KEY,
    at: float = T0,
    mid: str | None = None,
    payload: bytes | None = None,
    meta: bytes = b"",
) -> Fragment:
    return Fragment(
        key=key,
        seqnum=seqnum,
        total=total,
        message_id=mid if mid is not None else f"{key.reference}-{seqnum}",
        payload=payload if payload is not None else f"<{seqnum}>".encode(),
        received_at=at,
        meta=meta,
    )


def add_all(buf: ReassemblyBuffer, fragments: list[Fragment]) -> list[Assembled]:
    done: list[Assembled] = []
    for f in fragments:
        assembled, displaced = buf.add(f)
        assert displaced == []
        if assembled is not None:
            done.append(assembled)
    return done


# ------------------------------------------------------------------------------ assembling


@pytest.mark.parametrize("order", list(itertools.permutations([1, 2, 3])))
def test_three_parts_in_any_order_assemble_once(order: tuple[int, ...]) -> None:
    buf = ReassemblyBuffer()
    results = [buf.add(frag(n, meta=b"first" if n == 1 else b"")) for n in order]
    assert [a is not None for a, _ in results] == [False, False, True]
    assembled = results[-1][0]
    assert assembled is not None
    assert assembled.payload == b"<1><2><3>"
    assert assembled.part_ids == ["42-1", "42-2", "42-3"]
    assert assembled.all_ids == assembled.part_ids
    assert assembled.extra_ids == []
    assert assembled.first.seqnum == 1 and assembled.first.meta == b"first"
    assert assembled.key == KEY and assembled.total == 3
    assert len(buf) == 0 and buf.fragment_count == 0
    assert buf.next_deadline() is None


@given(
    st.integers(min_value=1, max_value=30).flatmap(lambda n: st.permutations(list(range(1, n + 1))))
)
def test_any_permutation_of_n_parts_assembles_exactly_once_in_order(order: list[int]) -> None:
    n = len(order)
    buf = ReassemblyBuffer()
    done = add_all(buf, [frag(s, n, payload=bytes([s])) for s in order])
    assert len(done) == 1
    assert done[0].payload == bytes(range(1, n + 1))
    assert [f.seqnum for f in done[0].fragments] == list(range(1, n + 1))
    assert len(buf) == 0 and buf.fragment_count == 0


def test_interleaved_messages_are_kept_apart_by_key() -> None:
    other_ref = PartKey("acme", "Shop|Co", "4915112345678", 43)
    other_dest = PartKey("acme", "Shop|Co", "4915100000000", 42)
    other_account = PartKey("other", "Shop|Co", "4915112345678", 42)
    buf = ReassemblyBuffer()
    keys = [KEY, other_ref, other_dest, other_account]
    for k in keys:
        assert buf.add(frag(1, 2, key=k, payload=k.account.encode())) == (None, [])
    assert len(buf) == 4 and buf.fragment_count == 4
    for k in keys:
        assembled, displaced = buf.add(frag(2, 2, key=k, payload=b"!"))
        assert displaced == []
        assert assembled is not None and assembled.key == k
        assert assembled.payload == k.account.encode() + b"!"
    assert len(buf) == 0


def test_single_part_with_total_one_completes_immediately() -> None:
    buf = ReassemblyBuffer()
    assembled, displaced = buf.add(frag(1, 1, payload=b"hello"))
    assert displaced == []
    assert assembled is not None and assembled.payload == b"hello"
    assert assembled.part_ids == ["42-1"]
    assert len(buf) == 0 and buf.next_deadline() is None


@pytest.mark.parametrize(
    ("seqnum", "total"), [(0, 3), (4, 3), (-1, 3), (1, 0), (0, 0), (1, -2), (1, 256)]
)
def test_invalid_seqnum_or_total_raises_without_changing_the_buffer(
    seqnum: int, total: int
) -> None:
    buf = ReassemblyBuffer()
    buf.add(frag(1, 3))
    with pytest.raises(ValueError):
        buf.add(frag(seqnum, total))
    assert len(buf) == 1 and buf.fragment_count == 1
    assert buf.add(frag(2, 3))[0] is None
    assert buf.add(frag(3, 3))[0] is not None


def test_255_parts_is_the_largest_message() -> None:
    buf = ReassemblyBuffer()
    done = add_all(buf, [frag(n, 255, payload=b"x") for n in range(1, 256)])
    assert len(done) == 1 and len(done[0].payload) == 255


# ------------------------------------------------------------------------------ duplicates


def test_duplicate_part_replaces_earlier_and_both_ids_get_receipts() -> None:
    buf = ReassemblyBuffer()
    buf.add(frag(1, 2, mid="a", payload=b"old"))
    assert buf.add(frag(2 - 1, 2, mid="b", payload=b"new", at=T0 + 1)) == (None, [])
    assert len(buf) == 1 and buf.fragment_count == 1
    assembled, _ = buf.add(frag(2, 2, mid="c", payload=b"!"))
    assert assembled is not None
    assert assembled.payload == b"new!"
    assert assembled.part_ids == ["b", "c"]
    assert assembled.extra_ids == ["a"]
    assert sorted(assembled.all_ids) == ["a", "b", "c"]


def test_identical_part_added_twice_is_idempotent() -> None:
    buf = ReassemblyBuffer()
    buf.add(frag(1, 2))
    assert buf.add(frag(1, 2)) == (None, [])
    assert buf.fragment_count == 1
    assembled, _ = buf.add(frag(2, 2))
    assert assembled is not None and assembled.extra_ids == []
    assert assembled.all_ids == ["42-1", "42-2"]


def test_each_id_reported_once_when_a_copy_comes_back() -> None:
    buf = ReassemblyBuffer()
    buf.add(frag(1, 2, mid="a"))
    buf.add(frag(1, 2, mid="b"))
    buf.add(frag(1, 2, mid="a"))
    assembled, _ = buf.add(frag(2, 2, mid="z"))
    assert assembled is not None
    assert sorted(assembled.all_ids) == ["a", "b", "z"]


def test_duplicate_after_assembly_opens_a_new_set_that_times_out() -> None:
    buf = ReassemblyBuffer(timeout=10)
    buf.add(frag(1, 2))
    assert buf.add(frag(2, 2))[0] is not None
    assert buf.add(frag(2, 2, mid="late", at=T0 + 1)) == (None, [])
    (incomplete,) = buf.expire(T0 + 11)
    assert incomplete.all_ids == ["late"] and incomplete.missing == [1]


def test_incomplete_carries_replaced_duplicates() -> None:
    buf = ReassemblyBuffer(timeout=10)
    buf.add(frag(1, 3, mid="a"))
    buf.add(frag(1, 3, mid="b"))
    (incomplete,) = buf.expire(T0 + 10)
    assert incomplete.part_ids == ["b"]
    assert incomplete.extra_ids == ["a"]
    assert incomplete.all_ids == ["b", "a"]


# ------------------------------------------------------------------------------ displacement


def test_same_key_with_different_total_supersedes_pending_set() -> None:
    buf = ReassemblyBuffer()
    buf.add(frag(1, 3, mid="old-1"))
    buf.add(frag(3, 3, mid="old-3"))
    assembled, displaced = buf.add(frag(2, 2, mid="new-2", at=T0 + 5))
    assert assembled is None
    (old,) = displaced
    assert old.reason == "superseded"
    assert old.total == 3 and old.part_ids == ["old-1", "old-3"] and old.missing == [2]
    assert len(buf) == 1 and buf.fragment_count == 1
    # The new set's deadline starts at its own first part.
    assert buf.next_deadline() == T0 + 5 + buf.timeout
    assembled, displaced = buf.add(frag(1, 2, mid="new-1", at=T0 + 6))
    assert displaced == []
    assert assembled is not None and assembled.part_ids == ["new-1", "new-2"]


def test_superseding_single_part_message_completes_and_reports_old_set() -> None:
    buf = ReassemblyBuffer()
    buf.add(frag(1, 2, mid="old"))
    assembled, displaced = buf.add(frag(1, 1, mid="new"))
    assert assembled is not None and assembled.part_ids == ["new"]
    assert [(i.reason, i.all_ids) for i in displaced] == [("superseded", ["old"])]
    assert len(buf) == 0


def test_oldest_set_is_evicted_beyond_max_pending() -> None:
    buf = ReassemblyBuffer(max_pending=3)
    keys = [PartKey("acme", "src", "dst", ref) for ref in range(5)]
    evicted: list[Incomplete] = []
    for i, k in enumerate(keys):
        assembled, displaced = buf.add(frag(1, 2, key=k, at=T0 + i))
        assert assembled is None
        evicted += displaced
    assert [(i.reason, i.key.reference) for i in evicted] == [("evicted", 0), ("evicted", 1)]
    assert len(buf) == 3 and buf.fragment_count == 3
    assert evicted[0].all_ids == ["0-1"]
    # Completing a held set frees room without evicting anything.
    assembled, displaced = buf.add(frag(2, 2, key=keys[2], at=T0 + 9))
    assert assembled is not None and displaced == []
    assert buf.add(frag(1, 2, key=PartKey("acme", "src", "dst", 99), at=T0 + 10)) == (None, [])
    assert len(buf) == 3


def test_eviction_bound_holds_under_many_first_parts() -> None:
    buf = ReassemblyBuffer(max_pending=100)
    evicted = 0
    for ref in range(1000):
        _, displaced = buf.add(frag(1, 3, key=PartKey("a", "s", "d", ref), at=T0 + ref))
        evicted += len(displaced)
    assert len(buf) == 100 and evicted == 900


# ------------------------------------------------------------------------------ timeouts


def test_incomplete_message_times_out_with_every_received_part() -> None:
    buf = ReassemblyBuffer(timeout=60)
    buf.add(frag(1, 4, at=T0))
    buf.add(frag(3, 4, at=T0 + 1))
    buf.add(frag(4, 4, at=T0 + 2))
    assert buf.next_deadline() == T0 + 60
    assert buf.expire(T0 + 59.999) == []
    (incomplete,) = buf.expire(T0 + 60)
    assert incomplete.reason == "timeout"
    assert incomplete.total == 4
    assert incomplete.all_ids == ["42-1", "42-3", "42-4"]
    assert [f.seqnum for f in incomplete.fragments] == [1, 3, 4]
    assert incomplete.missing == [2]
    assert len(buf) == 0 and buf.fragment_count == 0 and buf.next_deadline() is None
    assert buf.expire(T0 + 1000) == []


def test_timeout_is_measured_from_the_first_part_not_the_latest() -> None:
    buf = ReassemblyBuffer(timeout=60)
    buf.add(frag(1, 3, at=T0))
    buf.add(frag(2, 3, at=T0 + 59))  # a late part does not extend the deadline
    assert buf.next_deadline() == T0 + 60
    (incomplete,) = buf.expire(T0 + 60)
    assert incomplete.part_ids == ["42-1", "42-2"]


def test_part_arriving_after_the_deadline_does_not_join_the_stale_set() -> None:
    buf = ReassemblyBuffer(timeout=60)
    buf.add(frag(1, 2, at=T0, mid="stale"))
    # expire() has not run yet; the result must not depend on that.
    assembled, displaced = buf.add(frag(2, 2, at=T0 + 61, mid="fresh"))
    assert assembled is None
    assert [(i.reason, i.all_ids) for i in displaced] == [("timeout", ["stale"])]
    assert len(buf) == 1 and buf.next_deadline() == T0 + 121


def test_expire_returns_only_overdue_sets_oldest_first() -> None:
    buf = ReassemblyBuffer(timeout=10)
    for ref in range(5):
        buf.add(frag(1, 2, key=PartKey("a", "s", "d", ref), at=T0 + ref))
    expired = buf.expire(T0 + 12)
    assert [i.key.reference for i in expired] == [0, 1, 2]
    assert len(buf) == 2 and buf.next_deadline() == T0 + 13


def test_next_deadline_tracks_the_oldest_pending_set() -> None:
    buf = ReassemblyBuffer(timeout=30)
    assert buf.next_deadline() is None
    buf.add(frag(1, 2, key=PartKey("a", "s", "d", 1), at=T0))
    buf.add(frag(1, 2, key=PartKey("a", "s", "d", 2), at=T0 + 5))
    assert buf.next_deadline() == T0 + 30
    buf.add(frag(2, 2, key=PartKey("a", "s", "d", 1), at=T0 + 6))
    assert buf.next_deadline() == T0 + 35


@pytest.mark.parametrize(("timeout", "max_pending"), [(0, 10), (-1, 10), (10, 0)])
def test_bad_limits_are_rejected(timeout: float, max_pending: int) -> None:
    with pytest.raises(ValueError):
        ReassemblyBuffer(timeout=timeout, max_pending=max_pending)


# ------------------------------------------------------------------------------ restart


def stored(f: Fragment) -> StoredPart:
    return StoredPart(
        key=f.key.as_str(),
        seqnum=f.seqnum,
        total=f.total,
        message_id=f.message_id,
        payload=f.payload,
        received_at=f.received_at,
        meta=f.meta,
    )


def test_restore_after_restart_rebuilds_pending_and_returns_complete_sets() -> None:
    pending_key = PartKey("acme", "src", "dst", 1)
    complete_key = PartKey("acme", "src", "dst", 2)
    parts = [
        frag(3, 3, key=complete_key, at=T0 + 2),
        frag(1, 3, key=pending_key, at=T0 + 1, meta=b"m"),
        frag(1, 3, key=complete_key, at=T0),
        frag(2, 3, key=complete_key, at=T0 + 3),
        frag(3, 3, key=pending_key, at=T0 + 4),
        frag(1, 1, key=PartKey("acme", "src", "dst", 3), at=T0 + 5),
    ]
    buf = ReassemblyBuffer(timeout=60)
    done = buf.restore(Fragment.from_stored(stored(p)) for p in parts)
    assert sorted(a.key.reference for a in done) == [2, 3]
    by_ref = {a.key.reference: a for a in done}
    assert by_ref[2].payload == b"<1><2><3>"
    assert len(buf) == 1 and buf.fragment_count == 2
    assert buf.next_deadline() == T0 + 61  # from the first part's stored arrival time
    assembled, displaced = buf.add(frag(2, 3, key=pending_key, at=T0 + 10))
    assert displaced == []
    assert assembled is not None and assembled.payload == b"<1><2><3>"
    assert assembled.first.meta == b"m"


def test_restore_of_stale_sets_hands_them_to_the_next_expire() -> None:
    buf = ReassemblyBuffer(timeout=60)
    assert buf.restore([frag(1, 2, at=T0), frag(2, 3, key=PartKey("a", "s", "d", 9), at=T0)]) == []
    (a, b) = buf.expire(T0 + 3600)
    assert {a.reason, b.reason} == {"timeout"}
    assert len(buf) == 0


def test_restore_reports_superseded_and_evicted_sets_through_expire() -> None:
    buf = ReassemblyBuffer(timeout=60, max_pending=1)
    done = buf.restore(
        [
            frag(2, 2, key=PartKey("a", "s", "d", 2), at=T0 + 2, mid="other"),
            frag(1, 3, at=T0, mid="old"),
            frag(1, 2, at=T0 + 1, mid="new"),  # same key, other total: supersedes "old"
        ]
    )
    assert done == []
    assert buf.next_deadline() == -math.inf  # something to hand out right now
    out = buf.expire(T0 + 3)
    assert [(i.reason, i.all_ids) for i in out] == [
        ("superseded", ["old"]),
        ("evicted", ["new"]),
    ]
    assert len(buf) == 1 and buf.next_deadline() == T0 + 62
    assert buf.expire(T0 + 3) == []


def test_restore_keeps_duplicates_and_rejects_invalid_parts() -> None:
    buf = ReassemblyBuffer()
    assert buf.restore([frag(1, 2, mid="b", at=T0 + 1), frag(1, 2, mid="a", at=T0)]) == []
    assert len(buf) == 1 and buf.fragment_count == 1
    with pytest.raises(ValueError):
        buf.restore([frag(1, 2, key=PartKey("x", "y", "z", 1)), frag(3, 2)])
    assert len(buf) == 1  # nothing of the invalid batch was taken


def test_restore_of_duplicates_completes_with_extra_ids() -> None:
    buf = ReassemblyBuffer()
    (assembled,) = buf.restore(
        [frag(2, 2, mid="c", at=T0 + 2), frag(1, 2, mid="b", at=T0 + 1), frag(1, 2, mid="a", at=T0)]
    )
    assert assembled.part_ids == ["b", "c"] and assembled.extra_ids == ["a"]


# ------------------------------------------------------------------------------ keys


def test_key_string_is_plain_for_ordinary_fields() -> None:
    key = PartKey("acme", "4915112345678", "4917000000000", 200)
    assert key.as_str() == "acme|4915112345678|4917000000000|200"
    assert PartKey.from_str(key.as_str()) == key
    assert str(key) == key.as_str()


def test_key_string_escapes_separator_in_alphanumeric_sender() -> None:
    key = PartKey("a|b", "Shop|Co 100%", "%7C", 7)
    text = key.as_str()
    assert text.count("|") == 3
    assert PartKey.from_str(text) == key


@given(
    st.text(max_size=20),
    st.text(max_size=20),
    st.text(max_size=20),
    st.integers(min_value=0, max_value=65535),
)
def test_key_string_round_trips(account: str, source: str, destination: str, ref: int) -> None:
    key = PartKey(account, source, destination, ref)
    text = key.as_str()
    assert PartKey.from_str(text) == key
    assert text.count("|") == 3


@given(st.text(alphabet="ab|%7C25", max_size=12), st.text(alphabet="ab|%7C25", max_size=12))
def test_distinct_keys_give_distinct_strings(first: str, second: str) -> None:
    a = PartKey(first, second, "d", 1)
    b = PartKey(first + second, "", "d", 1)
    assert (a == b) == (a.as_str() == b.as_str())


@pytest.mark.parametrize(
    "text",
    [
        "a|b|c",
        "a|b|c|d|1",
        "a|b|c|x",
        "a|b|c|",
        "a|b|c| 1",
        "a|b|c|01",
        "a%|b|c|1",
        "a%4|b|c|1",
        "a%41|b|c|1",
    ],
)
def test_malformed_key_strings_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        PartKey.from_str(text)


def test_fragment_from_stored_part() -> None:
    f = frag(2, 3, meta=b"\x00meta")
    assert Fragment.from_stored(stored(f)) == f


@dataclass
class _Clock:
    now: float = T0


def test_a_timer_loop_driven_by_next_deadline_does_not_spin() -> None:
    buf = ReassemblyBuffer(timeout=5)
    buf.add(frag(1, 2, key=PartKey("a", "s", "d", 1), at=T0))
    buf.add(frag(1, 2, key=PartKey("a", "s", "d", 2), at=T0 + 1))
    clock = _Clock()
    expired: list[Incomplete] = []
    for _ in range(3):
        deadline = buf.next_deadline()
        if deadline is None:
            break
        clock.now = deadline
        got = buf.expire(clock.now)
        assert got, "expire at the announced deadline must return something"
        expired += got
    assert [i.key.reference for i in expired] == [1, 2]

import datetime as dt
import time
import uuid

from hypothesis import given
from hypothesis import strategies as st

from shared.ids import millis_of, new_uuids


def test_bulk_ids_are_distinct_version_7_uuids() -> None:
    ids = new_uuids(1000)
    assert len(set(ids)) == 1000
    assert {i.version for i in ids} == {7}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    assert {str(i)[19] for i in ids} <= set("89ab")


def test_an_id_carries_the_millisecond_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    [made] = new_uuids(1)
    after = time.time_ns() // 1_000_000
    assert before <= millis_of(made) <= after


@given(
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2200, 1, 1)),
    st.integers(min_value=1, max_value=10_000_000),
)
def test_later_ids_sort_after_earlier_ones(moment: dt.datetime, gap_ms: int) -> None:
    first_ms = int(moment.replace(tzinfo=dt.UTC).timestamp() * 1000)
    [earlier] = new_uuids(1, now_ms=first_ms)
    [later] = new_uuids(1, now_ms=first_ms + gap_ms)
    assert earlier < later  # uuid order is byte order: what a btree on uuid uses
    assert str(earlier) < str(later)
    assert millis_of(earlier) == first_ms

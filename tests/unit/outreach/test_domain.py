import datetime as dt

from services.outreach.domain import help_offer_deadline, is_newer_version


def test_deadline_is_four_weeks_after_forwarding() -> None:
    forwarded = dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.UTC)
    assert help_offer_deadline(forwarded) == dt.date(2026, 11, 30)


def test_deadline_counts_in_dutch_local_time() -> None:
    # 23:30 UTC on 2 November is already 3 November in the Netherlands.
    forwarded = dt.datetime(2026, 11, 2, 23, 30, tzinfo=dt.UTC)
    assert help_offer_deadline(forwarded) == dt.date(2026, 12, 1)


def test_deadline_across_the_summer_time_change() -> None:
    forwarded = dt.datetime(2026, 10, 10, 22, 30, tzinfo=dt.UTC)  # 11 October 00:30 CEST
    assert help_offer_deadline(forwarded) == dt.date(2026, 11, 8)


def test_only_a_newer_match_version_replaces_the_case() -> None:
    assert is_newer_version(1, None)
    assert is_newer_version(3, 2)
    assert not is_newer_version(2, 2)
    assert not is_newer_version(1, 2)

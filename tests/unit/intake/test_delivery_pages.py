import pytest

from services.intake.deliveries import unbroken_run


@pytest.mark.parametrize(
    ("processed", "after", "run"),
    [
        ([1, 2, 3], 0, 3),  # in order
        ([1001, 1002], 0, 0),  # the second chunk committed first: nothing yet from line 1
        ([1, 2, 1001], 0, 2),  # stop at the gap
        ([5, 6, 7], 4, 3),  # a later page
        ([], 0, 0),
    ],
)
def test_a_page_of_a_running_delivery_stops_at_the_first_missing_line(
    processed: list[int], after: int, run: int
) -> None:
    assert unbroken_run(processed, after) == run

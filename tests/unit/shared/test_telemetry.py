import asyncio

import pytest

from shared.telemetry import error_fields


def raise_with_data() -> None:
    raise ValueError("bsn 111222333 of Jansen")


def test_a_logged_error_names_type_and_place_never_the_message() -> None:
    with pytest.raises(ValueError) as caught:
        raise_with_data()
    fields = error_fields(caught.value)
    assert fields["error"] == "ValueError"
    assert fields["raised_at"].endswith("raise_with_data")
    assert "111222333" not in repr(fields) and "Jansen" not in repr(fields)


def test_a_task_group_failure_is_reported_by_its_first_cause() -> None:
    async def fail() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(asyncio.to_thread(raise_with_data))

    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(fail())
    assert error_fields(caught.value)["error"] == "ValueError"

"""A database error never carries the values it was given into a log or trace."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.intake.settings import IntakeSettings
from shared.db import make_engine
from tests.conftest import Infra

pytestmark = pytest.mark.integration


async def test_a_failing_statement_does_not_echo_its_parameters(infra: Infra) -> None:
    engine = make_engine(IntakeSettings().database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(
                    text("INSERT INTO signalen (id, partner_signaal_id) VALUES (:id, :ref)"),
                    {"id": "not-a-uuid", "ref": "Jansen-Brinkstraat-12"},
                )
    finally:
        await engine.dispose()
    assert "Jansen-Brinkstraat-12" not in str(caught.value)
    assert "hidden" in str(caught.value).lower()

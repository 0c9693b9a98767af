"""Each service's migrations build exactly the schema its models describe."""

from __future__ import annotations

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.registry import SERVICES, ServiceSpec
from shared.db import make_engine
from tests.conftest import Infra

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("spec", SERVICES, ids=[s.name for s in SERVICES])
async def test_migrated_schema_matches_the_models(infra: Infra, spec: ServiceSpec) -> None:
    metadata = importlib.import_module(f"{spec.module}.models").Base.metadata
    engine = make_engine(spec.settings().database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await engine.dispose()
    assert differences == []

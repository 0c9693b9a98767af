"""household keys compared byte by byte (COLLATE "C")

A household key is a hex digest: its order means nothing, and comparing it under the
database's locale (strcoll) costs more than comparing bytes, at every step down the
households and matches btrees. Same values, same equality; the indexes are rebuilt.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (("households", "key"), ("matches", "household_key"), ("signals", "household_key"))


def _collate(collation: str) -> None:
    # The foreign keys compare the columns: drop them while the types change.
    op.drop_constraint(op.f("fk_matches_household_key_households"), "matches", type_="foreignkey")
    op.drop_constraint(op.f("fk_signals_household_key_households"), "signals", type_="foreignkey")
    for table, column in _COLUMNS:
        op.execute(
            f'ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar(64) COLLATE "{collation}"'
        )
    op.create_foreign_key(
        op.f("fk_matches_household_key_households"),
        "matches",
        "households",
        ["household_key"],
        ["key"],
    )
    op.create_foreign_key(
        op.f("fk_signals_household_key_households"),
        "signals",
        "households",
        ["household_key"],
        ["key"],
    )


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")

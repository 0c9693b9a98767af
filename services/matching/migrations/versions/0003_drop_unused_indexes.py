"""drop the indexes no query uses: signals by household, matches by municipality

Every signal and match written paid for them (a random insert into each btree), and the
signals' household index, on a 64-character key, was the largest index of the service.
A household's signals are reached through its matches (ix_matches_household_recent, then
ix_signals_match_id).

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(op.f("ix_signals_household_key"), table_name="signals")
    op.drop_index(op.f("ix_matches_gemeentecode"), table_name="matches")


def downgrade() -> None:
    op.create_index(op.f("ix_matches_gemeentecode"), "matches", ["gemeentecode"], unique=False)
    op.create_index(op.f("ix_signals_household_key"), "signals", ["household_key"], unique=False)

"""signal lifecycle: withdrawn signals

A partner may withdraw a signal (ADR 0012). Matching marks the signal withdrawn (it stays
in the history, out of the rules) and keeps every withdrawal it heard of, so that one that
overtakes its signal (another topic) still takes effect when the signal arrives.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("signals", sa.Column("ingetrokken_op", sa.DateTime(timezone=True)))
    op.create_table(
        "withdrawn_signals",
        sa.Column("signal_id", sa.Uuid(), nullable=False),
        sa.Column("household_key", sa.String(length=64, collation="C"), nullable=False),
        sa.Column("ingetrokken_op", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("signal_id", name=op.f("pk_withdrawn_signals")),
    )


def downgrade() -> None:
    op.drop_table("withdrawn_signals")
    op.drop_column("signals", "ingetrokken_op")

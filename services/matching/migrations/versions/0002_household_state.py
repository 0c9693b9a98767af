"""household state, held matches, municipal rules

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gemeente_regels",
        sa.Column("gemeentecode", sa.String(length=6), nullable=False),
        sa.Column("opeenvolgend_maanden", sa.Integer(), nullable=False),
        sa.Column("bundeling", sa.String(length=20), nullable=False),
        sa.Column("bundeling_dagen", sa.Integer(), nullable=False),
        sa.Column("gewijzigd_op", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gewijzigd_door", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("gemeentecode", name=op.f("pk_gemeente_regels")),
        sa.CheckConstraint(
            "opeenvolgend_maanden BETWEEN 1 AND 6",
            name=op.f("ck_gemeente_regels_opeenvolgend_maanden"),
        ),
        sa.CheckConstraint(
            "bundeling IN ('geen', 'einde-maand', 'dagen')",
            name=op.f("ck_gemeente_regels_bundeling"),
        ),
        sa.CheckConstraint(
            "bundeling <> 'dagen' OR bundeling_dagen BETWEEN 1 AND 31",
            name=op.f("ck_gemeente_regels_bundeling_dagen"),
        ),
    )
    op.add_column("households", sa.Column("maanden", postgresql.ARRAY(sa.Integer()), nullable=True))
    op.add_column("matches", sa.Column("status", sa.String(length=20), nullable=True))
    op.add_column("matches", sa.Column("geopend_op", sa.DateTime(timezone=True), nullable=True))
    op.add_column("matches", sa.Column("doorsturen_op", sa.DateTime(timezone=True), nullable=True))
    op.add_column("matches", sa.Column("uitleg", sa.JSON(), nullable=True))
    # Existing matches were all forwarded at once; a household's months are its signals'.
    op.execute(
        "UPDATE matches SET status = 'doorgestuurd', geopend_op = doorgestuurd_op, "
        "doorsturen_op = doorgestuurd_op, uitleg = '{}'"
    )
    op.execute(
        "UPDATE households h SET maanden = COALESCE((SELECT array_agg(DISTINCT "
        "(extract(year FROM s.signaaldatum) * 12 + extract(month FROM s.signaaldatum) - 1)::int) "
        "FROM signals s WHERE s.household_key = h.key), '{}')"
    )
    for table, column in [
        ("households", "maanden"),
        ("matches", "status"),
        ("matches", "geopend_op"),
        ("matches", "doorsturen_op"),
        ("matches", "uitleg"),
    ]:
        op.alter_column(table, column, nullable=False)
    op.alter_column(
        "matches",
        "doorgestuurd_op",
        existing_type=postgresql.TIMESTAMP(timezone=True),
        nullable=True,
    )
    op.create_index(
        "ix_matches_held",
        "matches",
        ["doorsturen_op"],
        unique=False,
        postgresql_where=sa.text("status = 'gebundeld'"),
    )
    op.drop_index(op.f("ix_matches_household_key"), table_name="matches")
    op.create_index(
        "ix_matches_household_recent", "matches", ["household_key", "doorsturen_op"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_matches_household_recent", table_name="matches")
    op.create_index(op.f("ix_matches_household_key"), "matches", ["household_key"], unique=False)
    op.drop_index("ix_matches_held", table_name="matches")
    op.alter_column(
        "matches",
        "doorgestuurd_op",
        existing_type=postgresql.TIMESTAMP(timezone=True),
        nullable=False,
    )
    op.drop_column("matches", "uitleg")
    op.drop_column("matches", "doorsturen_op")
    op.drop_column("matches", "geopend_op")
    op.drop_column("matches", "status")
    op.drop_column("households", "maanden")
    op.drop_table("gemeente_regels")

"""person key destructions: every destroyed key, recorded for good

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "person_key_destructions",
        sa.Column("subject_id", sa.UUID(), nullable=False),
        sa.Column("key_id", sa.LargeBinary(length=8), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subject_id", "key_id", name=op.f("pk_person_key_destructions")),
    )
    # Keys destroyed before this table existed keep their record.
    op.execute(
        "INSERT INTO person_key_destructions (subject_id, key_id, destroyed_at) "
        "SELECT subject_id, key_id, destroyed_at FROM person_keys "
        "WHERE wrapped_key IS NULL AND destroyed_at IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table("person_key_destructions")

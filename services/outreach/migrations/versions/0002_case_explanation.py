"""the case keeps matching's explanation (uitleg)

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
    op.add_column("zaken", sa.Column("uitleg", sa.JSON(), nullable=True))
    op.execute("UPDATE zaken SET uitleg = '{}'")
    op.alter_column("zaken", "uitleg", nullable=False)


def downgrade() -> None:
    op.drop_column("zaken", "uitleg")

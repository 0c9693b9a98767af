"""audit trail: the audit_log hash-chained

Existing records keep their order (ids renumbered from 1) and are hashed into the
chain; a reason column and the gemeentecode index for `vroeg audit --gemeente` (ADR 0009).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared import audit

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("reason", sa.Text()))
    op.create_index(op.f("ix_audit_log_gemeentecode"), "audit_log", ["gemeentecode"], unique=False)
    audit.migration_chain_existing(op)


def downgrade() -> None:
    audit.migration_unchain_existing(op)
    op.drop_index(op.f("ix_audit_log_gemeentecode"), table_name="audit_log")
    op.drop_column("audit_log", "reason")

"""audit trail: the audit_log hash-chained, with a result like every service's

Existing records keep their order (ids renumbered from 1), get result 'ok' and are
hashed into the chain; object, gemeentecode and reason become optional (ADR 0009).

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared import audit

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("audit_log", "action", type_=sa.String(length=audit.ACTION_LENGTH))
    op.alter_column("audit_log", "object", nullable=True)
    op.alter_column("audit_log", "gemeentecode", nullable=True)
    op.alter_column("audit_log", "reason", nullable=True)  # kept whole: an audit log is never cut
    op.add_column(
        "audit_log",
        sa.Column(
            "result", sa.String(length=audit.RESULT_LENGTH), nullable=False, server_default="ok"
        ),
    )
    op.alter_column("audit_log", "result", server_default=None)
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)
    audit.migration_chain_existing(op)


def downgrade() -> None:
    audit.migration_unchain_existing(op)
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_column("audit_log", "result")
    op.execute(
        "UPDATE audit_log SET reason = coalesce(reason, ''), object = coalesce(object, ''), "
        "gemeentecode = coalesce(gemeentecode, '')"
    )
    op.alter_column("audit_log", "reason", nullable=False)
    op.alter_column("audit_log", "gemeentecode", nullable=False)
    op.alter_column("audit_log", "object", nullable=False)
    op.alter_column(
        "audit_log", "action", type_=sa.String(length=50), postgresql_using="left(action, 50)"
    )

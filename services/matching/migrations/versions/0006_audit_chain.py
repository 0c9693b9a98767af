"""audit trail: hash-chained audit_log, its chain head and the rejected side path

The service's audit records (ADR 0009): each stores the previous record's hash and
its own; writers serialise on the audit_chain row.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

from shared import audit

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    audit.migration_create_log(op)


def downgrade() -> None:
    audit.migration_drop_log(op)

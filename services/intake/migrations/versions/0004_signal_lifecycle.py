"""signal lifecycle: partner kinds and agreement, withdrawn signals, content fingerprints

- partners.soorten: the kinds of arrears a partner may report (a housing corporation that
  also supplies heat holds two); existing partners keep their one type.
- partners.afspraak / afspraak_sinds / signaal_na_dagen: the partner's agreement (the
  national convenant or an own agreement), from which date, after how many days of
  arrears it signals (policy plan, phase 1).
- signalen.ingetrokken_op: a partner withdrew the signal (ADR 0012).
- signalen.vingerafdruk: a keyed digest per field of what was delivered, so that the same
  partnerSignaalId with other content is told apart (409) without reading sealed data.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("partners", sa.Column("soorten", postgresql.ARRAY(sa.String(40))))
    op.execute("UPDATE partners SET soorten = ARRAY[soort]")
    op.alter_column("partners", "soorten", nullable=False)
    op.add_column(
        "partners",
        sa.Column("afspraak", sa.String(20), nullable=False, server_default="convenant"),
    )
    op.alter_column("partners", "afspraak", server_default=None)
    op.add_column("partners", sa.Column("afspraak_sinds", sa.Date()))
    op.execute("UPDATE partners SET afspraak_sinds = CAST(aangemaakt_op AS date)")
    op.alter_column("partners", "afspraak_sinds", nullable=False)
    op.add_column("partners", sa.Column("signaal_na_dagen", sa.Integer()))
    op.add_column("signalen", sa.Column("ingetrokken_op", sa.DateTime(timezone=True)))
    op.add_column("signalen", sa.Column("vingerafdruk", sa.JSON()))


def downgrade() -> None:
    op.drop_column("signalen", "vingerafdruk")
    op.drop_column("signalen", "ingetrokken_op")
    op.drop_column("partners", "signaal_na_dagen")
    op.drop_column("partners", "afspraak_sinds")
    op.drop_column("partners", "afspraak")
    op.drop_column("partners", "soorten")

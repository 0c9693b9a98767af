"""addresses blacklist deliveries audit sealed personal data

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
    # Signals stored before this revision hold personal data in plain JSON (development
    # builds only; nothing was deployed). Refuse rather than keep them unencrypted.
    if op.get_bind().execute(sa.text("SELECT count(*) FROM signalen")).scalar():
        raise RuntimeError(
            "signalen holds rows from before per-person encryption: recreate this "
            "development database (vroeg up does so by default)"
        )
    op.create_table(
        "adressen",
        sa.Column("postcode", sa.String(length=6), nullable=False),
        sa.Column("huisnummer", sa.Integer(), nullable=False),
        sa.Column("gemeentecode", sa.String(length=6), nullable=False),
        sa.PrimaryKeyConstraint("postcode", "huisnummer", name=op.f("pk_adressen")),
    )
    op.create_index(op.f("ix_adressen_gemeentecode"), "adressen", ["gemeentecode"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("object", sa.String(length=200), nullable=True),
        sa.Column("result", sa.String(length=40), nullable=False),
        sa.Column("gemeentecode", sa.String(length=6), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)
    op.create_table(
        "uitsluitingen",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("household_key", sa.String(length=64), nullable=False),
        sa.Column("gemeentecode", sa.String(length=6), nullable=False),
        sa.Column("reden", sa.String(length=40), nullable=False),
        sa.Column("toelichting", sa.String(length=300), nullable=True),
        sa.Column("begin", sa.Date(), nullable=False),
        sa.Column("einde", sa.Date(), nullable=False),
        sa.Column("bron", sa.String(length=20), nullable=False),
        sa.Column("ingevoerd_door", sa.String(length=200), nullable=False),
        sa.Column("ingevoerd_op", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verwijderd_op", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uitsluitingen")),
    )
    op.create_index(
        "ix_uitsluitingen_actief", "uitsluitingen", ["household_key", "einde"], unique=False
    )
    op.create_index(
        op.f("ix_uitsluitingen_gemeentecode"), "uitsluitingen", ["gemeentecode"], unique=False
    )
    op.create_table(
        "leveringen",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("partner_id", sa.Uuid(), nullable=False),
        sa.Column("formaat", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("ontvangen_op", sa.DateTime(timezone=True), nullable=False),
        sa.Column("afgerond_op", sa.DateTime(timezone=True), nullable=True),
        sa.Column("aantal", sa.Integer(), nullable=False),
        sa.Column("aantal_verwerkt", sa.Integer(), nullable=False),
        sa.Column("aantal_doorgestuurd", sa.Integer(), nullable=False),
        sa.Column("aantal_niet_doorgestuurd", sa.Integer(), nullable=False),
        sa.Column("aantal_geweigerd", sa.Integer(), nullable=False),
        sa.Column("inhoud", sa.LargeBinary(), nullable=True),
        sa.Column("verwerker", sa.String(length=64), nullable=True),
        sa.Column("lease_tot", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_leveringen_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leveringen")),
    )
    op.create_index(op.f("ix_leveringen_partner_id"), "leveringen", ["partner_id"], unique=False)
    op.create_index(op.f("ix_leveringen_status"), "leveringen", ["status"], unique=False)
    op.create_table(
        "levering_regels",
        sa.Column("levering_id", sa.Uuid(), nullable=False),
        sa.Column("regel", sa.Integer(), nullable=False),
        sa.Column("partner_signaal_id", sa.String(length=100), nullable=True),
        sa.Column("signal_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("fouten", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["levering_id"],
            ["leveringen.id"],
            name=op.f("fk_levering_regels_levering_id_leveringen"),
        ),
        sa.ForeignKeyConstraint(
            ["signal_id"], ["signalen.id"], name=op.f("fk_levering_regels_signal_id_signalen")
        ),
        sa.PrimaryKeyConstraint("levering_id", "regel", name=op.f("pk_levering_regels")),
    )
    op.add_column("partners", sa.Column("gewijzigd_op", sa.DateTime(timezone=True), nullable=True))
    op.add_column("signalen", sa.Column("aantal_termijnen", sa.Integer(), nullable=True))
    op.add_column("signalen", sa.Column("crisissignaal", sa.Boolean(), nullable=False))
    op.add_column("signalen", sa.Column("warme_overdracht", sa.Boolean(), nullable=False))
    op.add_column("signalen", sa.Column("subject_id", sa.Uuid(), nullable=False))
    op.add_column("signalen", sa.Column("levering_id", sa.Uuid(), nullable=True))
    op.alter_column(
        "signalen",
        "persoonsgegevens",
        existing_type=postgresql.JSON(astext_type=sa.Text()),
        type_=sa.Text(),
        existing_nullable=False,
    )
    op.create_index(op.f("ix_signalen_subject_id"), "signalen", ["subject_id"], unique=False)
    op.create_foreign_key(
        op.f("fk_signalen_levering_id_leveringen"),
        "signalen",
        "leveringen",
        ["levering_id"],
        ["id"],
    )
    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_constraint(op.f("fk_signalen_levering_id_leveringen"), "signalen", type_="foreignkey")
    op.drop_index(op.f("ix_signalen_subject_id"), table_name="signalen")
    op.alter_column(
        "signalen",
        "persoonsgegevens",
        existing_type=sa.Text(),
        type_=postgresql.JSON(astext_type=sa.Text()),
        existing_nullable=False,
    )
    op.drop_column("signalen", "levering_id")
    op.drop_column("signalen", "subject_id")
    op.drop_column("signalen", "warme_overdracht")
    op.drop_column("signalen", "crisissignaal")
    op.drop_column("signalen", "aantal_termijnen")
    op.drop_column("partners", "gewijzigd_op")
    op.drop_table("levering_regels")
    op.drop_index(op.f("ix_leveringen_status"), table_name="leveringen")
    op.drop_index(op.f("ix_leveringen_partner_id"), table_name="leveringen")
    op.drop_table("leveringen")
    op.drop_index(op.f("ix_uitsluitingen_gemeentecode"), table_name="uitsluitingen")
    op.drop_index("ix_uitsluitingen_actief", table_name="uitsluitingen")
    op.drop_table("uitsluitingen")
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_adressen_gemeentecode"), table_name="adressen")
    op.drop_table("adressen")
    # ### end Alembic commands ###

"""A generation number of the analysis policy, its rules and the worker registry, bumped by PostgreSQL itself.

Every process caches the policy snapshot job creation evaluates; each ingest reads this one row (one
primary-key read per batch) and reads the snapshot again only when the number moved, so a change made by
any process, or by hand in SQL, applies to the very next job everywhere. Statement-level triggers bump it,
so no code path can change the policy without it. The number comes from a sequence, never from
`generation + 1`: a change rolled back leaves its number used, so a snapshot read inside a transaction
that was rolled back can never match a later committed change.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLES = ("analysis_policy", "analysis_rules", "analysis_workers")


def upgrade() -> None:
    op.create_table(
        "policy_generation",
        sa.Column("id", sa.SmallInteger(), primary_key=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_policy_generation_one_row"),
    )
    op.execute("CREATE SEQUENCE policy_generation_seq")
    op.execute("INSERT INTO policy_generation (id, generation) VALUES (1, nextval('policy_generation_seq'))")
    op.execute(
        """
        CREATE FUNCTION bump_policy_generation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE policy_generation SET generation = nextval('policy_generation_seq') WHERE id = 1;
            RETURN NULL;
        END $$
        """
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_bump_policy_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_generation()"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER {table}_bump_policy_generation ON {table}")
    op.execute("DROP FUNCTION bump_policy_generation()")
    op.drop_table("policy_generation")
    op.execute("DROP SEQUENCE policy_generation_seq")

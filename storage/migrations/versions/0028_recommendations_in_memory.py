"""Recommendations served from memory (issue 22; docs/recommendations.md#serving).

The admin API keeps every list made ahead in memory and answers without reading PostgreSQL, so it has to
learn of every change, deletions included (an erasure, a merge): a trigger on each list table notifies
channel ``spoor_recommendations`` with ``u<user key>`` or ``p<product id>`` when a row is written or
deleted; the API reads those rows again (storage/recommendation_reads.py, ``ServedLists``). A notification
carries the key to listening connections only and is stored nowhere.

- ``product_recommendations``: each product's "customers also bought" list, made by the segments runner as
  the users' lists are;
- ``user_recommendations.ids``: the ids merged into the user (docs/identity.md), so that any of a user's
  ids finds their list in memory.

Revision ID: 0028
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0028"
down_revision = "0021"  # user_recommendations
branch_labels = None
depends_on = None

NOTIFY = """
CREATE FUNCTION spoor_notify_recommendations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'user_recommendations' THEN
        PERFORM pg_notify('spoor_recommendations', 'u' || coalesce(NEW.user_key, OLD.user_key));
    ELSE
        PERFORM pg_notify('spoor_recommendations', 'p' || coalesce(NEW.product_id, OLD.product_id));
    END IF;
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.add_column("user_recommendations", sa.Column("ids", ARRAY(sa.String(256))))
    op.create_table(
        "product_recommendations",
        sa.Column("product_id", sa.String(256), primary_key=True),
        sa.Column("items", JSONB, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        postgresql_with={"fillfactor": 70},
    )
    op.create_index("product_recommendations_computed_at", "product_recommendations", ["computed_at"])
    op.create_index("user_recommendations_computed_at", "user_recommendations", ["computed_at"])
    op.execute(NOTIFY)
    for table in ("user_recommendations", "product_recommendations"):
        op.execute(f"CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION spoor_notify_recommendations()")


def downgrade() -> None:
    op.execute("DROP TRIGGER user_recommendations_notify ON user_recommendations")
    op.drop_table("product_recommendations")
    op.execute("DROP FUNCTION spoor_notify_recommendations()")
    op.drop_index("user_recommendations_computed_at", "user_recommendations")
    op.drop_column("user_recommendations", "ids")

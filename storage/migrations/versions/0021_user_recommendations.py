"""Each user's recommendations, made ahead of requests (issue 22; docs/recommendations.md#serving).

Working out a list costs ~2.5 ms of CPU (the user's interests, the neighbours of up to 20 products, the
blend): more than the admin API can spend per request at 500 requests/s beside the pipeline on two cores.
The segments runner makes the lists of the users changed since its last pass (as it refreshes their
interest profiles), and the API serves a stored list while it is the user's current one: made from the
interests as they are now (``interests_changed_at``) and not older than a few seconds' worth of other
shoppers' events; else it works the list out on the spot.

Revision ID: 0021
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0021"
down_revision = "0016"  # user_interests: a stored list is valid while they have not changed
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_recommendations",
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("items", JSONB, nullable=False),
        sa.Column("personal", sa.Boolean, nullable=False),
        sa.Column("interests_changed_at", sa.DateTime(timezone=True)),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        postgresql_with={"fillfactor": 70},
    )


def downgrade() -> None:
    op.drop_table("user_recommendations")

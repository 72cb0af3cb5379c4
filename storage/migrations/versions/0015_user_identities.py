"""One shopper, one profile (issue 21): the ids joined to each user.

A row says that ``id`` (an anonymous id, an alias's previous id, another user id) was linked to the
user ``user_key``: ``linked`` when the user's events named it, ``merged`` once its rows and state were
moved into the user's, ``refused`` (with the reason) when it could not be. An id is merged into at most
one user (the partial unique index); refusals may name several users, hence the primary key
(id, user_key), which also answers a lookup by id in one index probe. docs/identity.md.

Revision ID: 0015
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0001"  # user_profiles (0001): the ids are joined to the users it keys
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_identities",
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("kind IN ('anonymous', 'alias', 'user')", name="user_identities_kind"),
        sa.CheckConstraint("status IN ('linked', 'merged', 'refused')", name="user_identities_status"),
        sa.CheckConstraint("id <> user_key", name="user_identities_not_self"),
    )
    op.create_index("user_identities_user", "user_identities", ["user_key"])
    op.create_index("user_identities_merged", "user_identities", ["id"], unique=True,
                    postgresql_where=sa.text("status = 'merged'"))


def downgrade() -> None:
    op.drop_table("user_identities")

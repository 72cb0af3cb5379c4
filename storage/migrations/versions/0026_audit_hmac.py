"""The privacy audit keeps a keyed hash of an erased id (issue 24): HMAC-SHA256 under SPOOR_AUDIT_HMAC_KEY.

Rows written before kept the plain SHA-256 of the id, which anyone can reverse for an e-mail address or a
short id by hashing guesses. They cannot be re-keyed (the id is gone), so their hashes are removed: the
row stays as the record that an erasure happened (when, by whom, what was removed), ``user_key_hmac``
NULL and ``details.unkeyed_hashes_removed`` naming this revision. Downgrading does not bring them back.

Revision ID: 0026
"""
from alembic import op

revision = "0026"
down_revision = "0006"  # privacy_audit_log (0006)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_privacy_audit_log_user_key_sha256", table_name="privacy_audit_log")
    op.alter_column("privacy_audit_log", "user_key_sha256", new_column_name="user_key_hmac", nullable=True)
    op.execute("UPDATE privacy_audit_log SET user_key_hmac = NULL,"
               " details = (details - 'ids_sha256') || '{\"unkeyed_hashes_removed\": \"0026\"}'::jsonb")
    op.create_index("ix_privacy_audit_log_user_key_hmac", "privacy_audit_log", ["user_key_hmac"])


def downgrade() -> None:
    op.drop_index("ix_privacy_audit_log_user_key_hmac", table_name="privacy_audit_log")
    op.execute("UPDATE privacy_audit_log SET user_key_hmac = '' WHERE user_key_hmac IS NULL")
    op.alter_column("privacy_audit_log", "user_key_hmac", new_column_name="user_key_sha256", nullable=False)
    op.create_index("ix_privacy_audit_log_user_key_sha256", "privacy_audit_log", ["user_key_sha256"])

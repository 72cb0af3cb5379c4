"""A person's consent per purpose as recorded by `spoor users consent` or the API, and their time zone.

Recorded here: ``opted_out`` (every purpose withdrawn; campaigns' historical opt-out), and each purpose
of ``spoor.consent.PURPOSES`` granted (true) or withdrawn (false). The person's pages state consent too,
on their events; the worker records the latest such statement beside this one (``page_`` columns). A
withdrawal in either wins (docs/privacy.md#consent): a consent banner cannot undo what the person asked
the shop to record, and a recorded grant does not override what the page says now.
"""

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, func
from sqlalchemy.dialects.postgresql import insert

from spoor.consent import PURPOSES
from spoor.privacy import PrivacyError
from spoor.storage.segment_tables import UserConsent

CONSENT = UserConsent.__table__


class ConsentError(PrivacyError):
    """A consent change that cannot be recorded (an unknown time zone or purpose)."""


def set_consent(engine: Engine, user_key: str, opted_out: bool | None = None, time_zone: str | None = None,
                purposes: dict[str, bool] | None = None) -> dict:
    """Record what is given (None: unchanged) for ``user_key``, the person's resolved key; returns the row.
    The row's ``updated_at`` moves, so a running worker applies the change within SPOOR_CONSENT_REFRESH_S."""
    values = {"user_key": user_key}
    if opted_out is not None:
        values["opted_out"] = opted_out
    if time_zone is not None:
        try:
            ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConsentError(f"unknown time zone {time_zone[:64]!r} (use an IANA name)") from None
        values["time_zone"] = time_zone
    for purpose, granted in (purposes or {}).items():
        if purpose not in PURPOSES:
            raise ConsentError(f"unknown purpose {purpose[:64]!r} (one of {', '.join(PURPOSES)})")
        if not isinstance(granted, bool):
            raise ConsentError(f"{purpose} must be true or false")
        values[purpose] = granted
    updates = {k: v for k, v in values.items() if k != "user_key"} | {"updated_at": func.now()}
    with engine.begin() as conn:
        row = conn.execute(insert(CONSENT).values(**values).on_conflict_do_update(
            index_elements=["user_key"], set_=updates).returning(CONSENT)).one()
    return dict(row._mapping)


def withdrawn(row: dict | None) -> list[str]:
    """The purposes a ``user_consent`` row withdraws, recorded or stated by the page (``storage.consent_store``'s
    rule, for a row already read)."""
    if not row:
        return []
    return [p for p in PURPOSES if row.get("opted_out") or row.get(p) is False or row.get(f"page_{p}") is False]

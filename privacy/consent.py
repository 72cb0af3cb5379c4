"""A user's consent to campaign messages, and the time zone their quiet hours are read in."""

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, func
from sqlalchemy.dialects.postgresql import insert

from spoor.privacy import PrivacyError
from spoor.storage.segment_tables import UserConsent

CONSENT = UserConsent.__table__


class ConsentError(PrivacyError):
    """A consent change that cannot be recorded (an unknown time zone)."""


def set_consent(engine: Engine, user_key: str, opted_out: bool | None = None, time_zone: str | None = None) -> dict:
    values = {"user_key": user_key}
    if opted_out is not None:
        values["opted_out"] = opted_out
    if time_zone is not None:
        try:
            ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConsentError(f"unknown time zone {time_zone[:64]!r} (use an IANA name)") from None
        values["time_zone"] = time_zone
    updates = {k: v for k, v in values.items() if k != "user_key"} | {"updated_at": func.now()}
    with engine.begin() as conn:
        row = conn.execute(insert(CONSENT).values(**values).on_conflict_do_update(
            index_elements=["user_key"], set_=updates).returning(CONSENT)).one()
    return dict(row._mapping)


"""Campaign rules as pure decisions: holdout, variant, consent, expiry, frequency cap, quiet hours, backoff."""

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from spoor.campaigns.campaign_spec import CampaignSpec, QuietHours, Variant

MAX_BACKOFF_S = 3600


def in_holdout(campaign: str, user_key: str, percent: float) -> bool:
    """Stable per (campaign, user): the same user is always in or out of a campaign's holdout."""
    digest = hashlib.sha256(f"{campaign}\x00{user_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 * 100 < percent


def variant_for(campaign: str, user_key: str, variants: list[Variant]) -> str:
    """The variant a user gets: ``u = first 8 bytes of sha256("variant" NUL campaign NUL user) / 2^64`` picks the
    first variant whose cumulative weight share exceeds ``u``. Stable per (campaign, user) across restarts,
    and independent of the holdout draw (whose hash input has no "variant" prefix)."""
    if len(variants) == 1:
        return variants[0].name
    digest = hashlib.sha256(f"variant\x00{campaign}\x00{user_key}".encode()).digest()
    u, total, cumulative = int.from_bytes(digest[:8], "big") / 2 ** 64, sum(v.weight for v in variants), 0.0
    for variant in variants:
        cumulative += variant.weight / total
        if u < cumulative:
            return variant.name
    return variants[-1].name  # u just under 1 and a rounding short of the last share


def idempotency_key(campaign: str, user_key: str, episode: str) -> str:
    """The same for every attempt of one (campaign, user, episode): receivers deduplicate on it."""
    return hashlib.sha256(f"{campaign}\x00{user_key}\x00{episode}".encode()).hexdigest()


def zone(name: str | None, default: str) -> ZoneInfo:
    for candidate in (name, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def quiet_until(now: datetime, quiet: QuietHours, tz: ZoneInfo) -> datetime | None:
    """When quiet hours end if ``now`` is inside them (in the user's zone), else None."""
    local = now.astimezone(tz)
    t = local.time().replace(tzinfo=None)
    if quiet.start < quiet.end:
        inside = quiet.start <= t < quiet.end
    else:  # over midnight, e.g. 21:00-08:00
        inside = t >= quiet.start or t < quiet.end
    if not inside:
        return None
    end_day = local.date() if t < quiet.end else local.date() + timedelta(days=1)
    return datetime.combine(end_day, quiet.end, tzinfo=tz).astimezone(now.tzinfo)


@dataclass(frozen=True)
class Decision:
    action: str  # send | postpone | drop
    status: str | None = None  # the final status when dropped
    until: datetime | None = None  # when postponed


def decide(spec: CampaignSpec, now: datetime, *, expires_at: datetime | None, opted_out: bool,
           sent_in_cap_window: int, tz: ZoneInfo) -> Decision:
    """What to do with a due delivery now. Consent first: an opted-out user never gets anything."""
    if opted_out:
        return Decision("drop", "opted_out")
    if expires_at is not None and now >= expires_at:
        return Decision("drop", "expired")
    if spec.frequency_cap and sent_in_cap_window >= spec.frequency_cap.max:
        return Decision("drop", "capped")
    if spec.quiet_hours:
        until = quiet_until(now, spec.quiet_hours, tz)
        if until is not None:
            if expires_at is not None and until >= expires_at:
                return Decision("drop", "expired")
            return Decision("postpone", until=until)
    return Decision("send")


def retry_at(spec: CampaignSpec, now: datetime, attempts: int) -> datetime:
    return now + timedelta(seconds=min(MAX_BACKOFF_S, spec.retry_backoff * 2 ** max(0, attempts - 1)))

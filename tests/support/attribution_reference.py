"""An independent pandas computation of channel attribution (docs/attribution.md), with none of Spoor's code.

Whole-table joins and integer arithmetic instead of segments/attribution_models.py's per-person loop and
fractions: every model's weights are numerators over one denominator per conversion, the largest
remainder is a rank within the conversion.
"""

from decimal import Decimal

import pandas as pd

MODELS = ("first_touch", "last_touch", "linear", "position_based")
KEY = ["user_key", "conversion_id", "model", "touch", "session_id", "channel", "amount"]


def channels(sessions: pd.DataFrame) -> pd.Series:
    """UTM source (with " / medium" if any), else the referrer's host in lower case, else direct."""
    source = sessions["utm_source"].fillna("")
    medium = sessions["utm_medium"].fillna("")
    host = sessions["referrer"].fillna("").str.extract(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)")[0].str.lower()
    utm = source.where(medium == "", source + " / " + medium)
    return utm.where(source != "", host.fillna("direct"))


def _unit(amount: Decimal) -> Decimal:
    return Decimal("0.01") if amount == amount.quantize(Decimal("0.01")) else Decimal("0.0001")


def _weights(model: str, position: pd.Series, n: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(numerator, denominator) of each touch's weight."""
    one = pd.Series(1, index=position.index)
    if model == "first_touch":
        return (position == 0).astype(int), one
    if model == "last_touch":
        return (position == n - 1).astype(int), one
    if model == "linear":
        return one, n
    ends = (position == 0) | (position == n - 1)
    many = n >= 3
    numerator = one.where(~many, (2 * (n - 2)).where(ends, 1))
    denominator = n.where(~many, 5 * (n - 2))
    return numerator, denominator


def attribution(sessions: pd.DataFrame, conversions: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """sessions: user_key, session_id, started_at, utm_source, utm_medium, referrer; conversions: user_key, conversion_id, kind
    (order | refund), order_id (None: none), at, amount (Decimal >= 0). Returns the rows KEY."""
    sessions = sessions.assign(channel=channels(sessions))[["user_key", "session_id", "started_at", "channel"]]
    conv = conversions.sort_values(["at", "conversion_id"]).copy()
    conv["order_id"] = conv["order_id"].astype(object).where(conv["order_id"].notna(), None)
    is_order_with_id = (conv["kind"] == "order") & conv["order_id"].notna()
    repeated = is_order_with_id & conv.duplicated(["user_key", "order_id", "kind"], keep="first")
    conv = conv[~repeated]
    anchors = conv[(conv["kind"] == "order") & conv["order_id"].notna()][["user_key", "order_id", "at"]]
    conv = conv.merge(anchors.rename(columns={"at": "anchor"}), on=["user_key", "order_id"], how="left")
    conv["anchor"] = conv["anchor"].where(conv["anchor"].notna(), conv["at"])

    pairs = conv.merge(sessions, on="user_key", how="inner")
    pairs = pairs[(pairs["started_at"] >= pairs["anchor"] - window) & (pairs["started_at"] <= pairs["anchor"])]
    pairs = pairs.sort_values(["conversion_id", "started_at", "session_id"])
    pairs["touch"] = pairs.groupby("conversion_id").cumcount()
    direct = conv[~conv["conversion_id"].isin(pairs["conversion_id"])].copy()
    direct["session_id"], direct["channel"], direct["touch"] = None, "direct", 0
    touches = pd.concat([pairs, direct], ignore_index=True)
    touches["n"] = touches.groupby("conversion_id")["touch"].transform("size")

    touches["unit"] = touches["amount"].map(_unit)
    touches["units"] = [int(a / u) for a, u in zip(touches["amount"], touches["unit"])]
    touches["sign"] = touches["kind"].map({"order": 1, "refund": -1})
    frames = []
    for model in MODELS:
        t = touches.copy()
        t["model"] = model
        t["num"], t["den"] = _weights(model, t["touch"], t["n"])
        exact = t["units"] * t["num"]
        t["floor"], t["rem"] = exact // t["den"], exact % t["den"]
        t["left"] = t["units"] - t.groupby("conversion_id")["floor"].transform("sum")
        t = t.sort_values(["conversion_id", "rem", "touch"], ascending=[True, False, True])
        t["rank"] = t.groupby("conversion_id").cumcount()
        t["part"] = t["floor"] + (t["rank"] < t["left"]).astype(int)
        frames.append(t[t["num"] > 0])
    out = pd.concat(frames, ignore_index=True)
    out["amount"] = [s * p * u for s, p, u in zip(out["sign"], out["part"], out["unit"])]
    return out[KEY]


def as_set(frame: pd.DataFrame) -> set[tuple]:
    """Rows comparable with PostgreSQL's: amounts normalised (0.5000 == 0.50), no session as None."""
    return {(r.user_key, r.conversion_id, r.model, int(r.touch), r.session_id if isinstance(r.session_id, str) else None,
             r.channel, Decimal(r.amount).normalize() + 0) for r in frame.itertuples(index=False)}

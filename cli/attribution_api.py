"""GET /v1/attribution on the admin API (docs/attribution.md): revenue by channel under each model.

Included by cli/admin_api.py behind the admin token (AdminGuard refuses reader keys here). Every input is
bounded: a model of ``MODELS``, ISO dates between 1970 and 2099, at most ``MAX_REPORT_DAYS`` days, at most
``MAX_REPORT_ROWS`` rows; anything else is a 422 with the reason.
"""

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from spoor.events import EARLIEST_EVENT_TIME, LATEST_EVENT_TIME
from spoor.segments.attribution import MAX_REPORT_DAYS, MAX_REPORT_ROWS, check_period, report
from spoor.segments.attribution_models import MODELS

DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
Model = Literal["first_touch", "last_touch", "linear", "position_based"]
DEFAULT_DAYS = 30


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError as err:
        raise HTTPException(422, f"{name}: not a date (YYYY-MM-DD): {err}") from None
    if not EARLIEST_EVENT_TIME.date() <= day < LATEST_EVENT_TIME.date():
        raise HTTPException(422, f"{name}: must fall between {EARLIEST_EVENT_TIME:%Y} and {LATEST_EVENT_TIME:%Y}")
    return day


def attribution_router(engine: Engine, clock: Callable[[], datetime]) -> APIRouter:
    router = APIRouter(tags=["attribution"])

    @router.get("/v1/attribution", summary="Revenue by channel under each attribution model (UTC days)")
    async def attribution(
            model: Annotated[Model | None, Query(description="one model; all four when absent")] = None,
            start: Annotated[str | None, Query(alias="from", pattern=DATE, max_length=10,
                                               description="first UTC day (default: 29 days before `to`)")] = None,
            end: Annotated[str | None, Query(alias="to", pattern=DATE, max_length=10,
                                             description="last UTC day, included (default: today)")] = None,
            per_day: Annotated[bool, Query(description="one row per UTC day, model and channel")] = False,
            limit: Annotated[int, Query(ge=1, le=MAX_REPORT_ROWS)] = 1000) -> dict:
        last = _day(end, "to") or clock().date()
        first = _day(start, "from") or last - timedelta(days=DEFAULT_DAYS - 1)
        try:
            check_period(first, last, MAX_REPORT_DAYS)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        models = [model] if model else list(MODELS)
        return await run_in_threadpool(report, engine, first, last, models, per_day, limit)

    return router

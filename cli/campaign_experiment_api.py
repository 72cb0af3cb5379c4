"""GET /campaigns/{name}/experiment on the admin API (docs/campaigns.md#experiments-variants-and-roi): each
variant against the holdout, per user, with revenue and ROI. Included by cli/admin_api.py behind the admin
token; an unknown campaign is a 404 (the API's SpoorError handler), ``days`` outside 1-90 a 422."""

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import Engine

from spoor.campaigns import campaign_dispatch

Name = Annotated[str, Path(max_length=64, pattern=r"^[^\x00]*$")]


def campaign_experiment_router(engine: Engine) -> APIRouter:
    router = APIRouter(tags=["campaigns"])

    @router.get("/campaigns/{name}/experiment",
                summary="Variants against the holdout: conversion and revenue per user, lifts with 95% intervals, "
                        "verdicts, ROI, power warnings")
    def campaign_experiment(name: Name, days: int | None = Query(None, ge=1, le=90)) -> dict:
        report = campaign_dispatch.report(engine, name, days)
        return {"campaign": name, "conversion_window_days": report["conversion_window_days"],
                **report["experiment"]}

    return router

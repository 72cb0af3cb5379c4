"""A campaign report's experiment as lines of text for a terminal (``spoor campaigns report NAME --text``, the
demo's summary). Pure."""


def _pct(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else f"{value * 100:{'+' if signed else ''}.2f}%"


def _money(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else f"{value:{'+' if signed else ''},.2f}"


def _ratio(value: float | None, _signed: bool = True) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _interval(ci: list[float] | None, show) -> str:
    return "" if ci is None else f" [{show(ci[0], True)}, {show(ci[1], True)}]"


def experiment_lines(report: dict) -> list[str]:
    """One block per variant against the holdout, then the campaign overall and the warnings."""
    experiment = report["experiment"]
    hold = experiment["holdout"]
    lines = [f"campaign {report['campaign']}: conversion window {report['conversion_window_days']} days, "
             f"per user, intent to treat",
             f"  holdout     {hold['users']:>7,} users  conversion {_pct(hold['conversion_rate'])}  "
             f"revenue/user {_money(hold['revenue_per_user'])}"]
    for v in [*experiment["variants"], {"name": "all variants", **experiment["overall"]}]:
        conversion, revenue = v["conversion"], v["revenue_per_user_lift"]
        lines += [
            f"  {v['name']:<11} {v['users']:>7,} users  {v['messages_sent']:,} sent  conversion "
            f"{_pct(v['conversion_rate'])}  revenue/user {_money(v['revenue_per_user'])}",
            f"    conversion lift {_pct(conversion['absolute_lift'], True)}"
            f"{_interval(conversion['absolute_lift_ci'], _pct)} (95%), relative "
            f"{_pct(conversion['relative_lift'], True)}{_interval(conversion['relative_lift_ci'], _pct)}: "
            f"{conversion['verdict'].replace('_', ' ')}",
            f"    revenue/user lift {_money(revenue['absolute_lift'], True)}"
            f"{_interval(revenue['absolute_lift_ci'], _money)} (95%, Welch on winsorised values): "
            f"{revenue['verdict'].replace('_', ' ')}",
            f"    cost {_money(v['cost'])}  incremental revenue {_money(v['incremental_revenue'], True)}"
            f"{_interval(v['incremental_revenue_ci'], _money)}  ROI {_ratio(v['roi'])}{_interval(v['roi_ci'], _ratio)}"]
        lines += [f"    warning: {w}" for w in v.get("warnings", [])]
    lines += [f"  warning: {w}" for w in experiment["warnings"]]
    return lines

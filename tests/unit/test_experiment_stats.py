"""The experiment statistics (campaigns/experiment_stats.py, lift.py, experiment.analyse) held to scipy and
statsmodels on the same numbers, and the variant assignment to its contract."""

import math
import random

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats import proportion as sm_proportion
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from spoor.campaigns import experiment_stats as st
from spoor.campaigns.campaign_rules import in_holdout, variant_for
from spoor.campaigns.campaign_spec import CampaignDefinitionError, parse_campaign
from spoor.campaigns.experiment import analyse
from spoor.campaigns.lift import lift

BASE = {"name": "cart_rescue", "audience": {"trigger": "cart_abandonment"}, "action": {"kafka_topic": "crm"}}


@pytest.mark.parametrize("df", [1, 2.5, 7.3, 30, 153.7, 2_000.5])
def test_student_t_matches_scipy(df):
    for p in (0.5, 0.6, 0.9, 0.975, 0.995, 0.999999, 0.025):
        assert st.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-12)
    for t in (-4.0, -0.3, 0.0, 0.1, 1.96, 3.5, 12.0):
        assert st.t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-8)


@pytest.mark.parametrize("counts", [(500, 40, 480, 25), (12_000, 610, 3_000, 120), (90, 3, 110, 9),
                                    (2_000, 1_990, 1_000, 975)])
def test_conversion_lift_matches_statsmodels(counts):
    n_t, x_t, n_h, x_h = counts
    out = lift(n_t, x_t, n_h, x_h)
    assert out["absolute_lift_ci"] == pytest.approx(
        list(sm_proportion.confint_proportions_2indep(x_t, n_t, x_h, n_h, method="wald", compare="diff")), rel=1e-10)
    ratio = sm_proportion.confint_proportions_2indep(x_t, n_t, x_h, n_h, method="log", compare="ratio")
    assert out["relative_lift_ci"] == pytest.approx([ratio[0] - 1, ratio[1] - 1], rel=1e-10)
    assert st.conversion_p_value(n_t, x_t, n_h, x_h) == pytest.approx(
        sm_proportion.test_proportions_2indep(x_t, n_t, x_h, n_h, method="wald", compare="diff").pvalue, rel=1e-9)
    low, high = out["absolute_lift_ci"]  # the interval and the test agree
    assert (low > 0 or high < 0) == (st.conversion_p_value(n_t, x_t, n_h, x_h) < 0.05)


def test_conversion_without_variation_has_no_p_value():
    assert st.conversion_p_value(100, 0, 80, 0) is None
    assert st.verdict(0.0, None) == "insufficient_data"


@pytest.mark.parametrize("n_t,n_h,rate", [(1_000, 1_000, 0.05), (9_000, 1_000, 0.12), (150, 40, 0.3)])
def test_conversion_mde_has_80_percent_power_in_statsmodels(n_t, n_h, rate):
    mde = st.conversion_mde(n_t, n_h, rate)
    effect = sm_proportion.proportion_effectsize(rate + mde, rate)
    power = NormalIndPower().power(effect_size=effect, nobs1=n_t, alpha=0.05, ratio=n_h / n_t, alternative="two-sided")
    assert power == pytest.approx(0.80, abs=1e-4)  # two-sided power adds the far tail's ~1e-7


def skewed_revenue(rng: np.random.Generator, n: int, buy_rate: float, scale: float) -> list[float]:
    """Mostly zeros; buyers' baskets log-normal with a long tail, a few refunds (negative)."""
    buys = rng.random(n) < buy_rate
    basket = rng.lognormal(mean=math.log(scale), sigma=1.2, size=n)
    refunds = rng.random(n) < 0.01
    return list(np.where(buys, basket, 0.0) - np.where(refunds, 20.0, 0.0))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_winsorised_welch_matches_numpy_scipy_and_statsmodels(seed):
    rng = np.random.default_rng(seed)
    treated, holdout = skewed_revenue(rng, 3_000, 0.08, 60), skewed_revenue(rng, 700, 0.06, 55)
    (t, h), (low, high) = st.winsorise(treated, holdout)
    pooled = np.array(treated + holdout)
    assert (low, high) == pytest.approx((np.percentile(pooled[pooled < 0], 1), np.percentile(pooled[pooled > 0], 99)),
                                        rel=1e-12)
    assert t == pytest.approx(list(np.clip(treated, low, high)))
    assert h == pytest.approx(list(np.clip(holdout, low, high)))
    assert max(treated) > high  # the tail was cut

    out = st.welch(t, h)
    reference = stats.ttest_ind(t, h, equal_var=False)
    assert out["t"] == pytest.approx(reference.statistic, rel=1e-10)
    assert out["p_value"] == pytest.approx(reference.pvalue, rel=1e-8)
    compare = CompareMeans(DescrStatsW(np.array(t)), DescrStatsW(np.array(h)))
    assert out["difference_ci"] == pytest.approx(list(compare.tconfint_diff(alpha=0.05, usevar="unequal")), rel=1e-9)
    assert out["df"] == pytest.approx(compare.ttest_ind(usevar="unequal")[2], rel=1e-10)
    # relative lift: delta method on log(mean_t / mean_h)
    mt, mh = np.mean(t), np.mean(h)
    se = math.sqrt(np.var(t, ddof=1) / len(t) / mt ** 2 + np.var(h, ddof=1) / len(h) / mh ** 2)
    assert out["relative_ci"] == pytest.approx([math.exp(math.log(mt / mh) + s * 1.959963984540054 * se) - 1
                                                for s in (-1, 1)], rel=1e-9)
    mde = st.mean_mde(t, h)
    assert stats.norm.cdf(mde / math.sqrt(np.var(t, ddof=1) / len(t) + np.var(h, ddof=1) / len(h))
                          - stats.norm.ppf(0.975)) == pytest.approx(0.80, abs=1e-9)


def test_welch_needs_two_values_and_some_variance():
    assert st.welch([1.0], [1.0, 2.0]) is None
    assert st.welch([0.0, 0.0], [0.0, 0.0, 0.0]) is None


def test_holm_matches_statsmodels():
    p = [0.01, 0.04, 0.03, 0.2, 0.0001]
    assert st.holm(p) == pytest.approx(list(multipletests(p, alpha=0.05, method="holm")[1]), rel=1e-12)
    assert st.holm([0.02, None, 0.03]) == pytest.approx([0.04, None, 0.04])


def test_variant_assignment_is_stable_weighted_and_independent_of_the_holdout():
    spec = parse_campaign({**BASE, "holdout_percent": 20,
                           "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]})
    users = [f"user-{i}" for i in range(40_000)]
    first = [variant_for(spec.name, u, spec.arms()) for u in users]
    assert first == [variant_for(spec.name, u, spec.arms()) for u in users]  # a restart draws the same
    held = [in_holdout(spec.name, u, spec.holdout_percent) for u in users]
    table = [[sum(1 for v, hd in zip(first, held) if v == name and hd == flag) for name in ("a", "b")]
             for flag in (True, False)]
    assert stats.chi2_contingency(table).pvalue > 0.001  # the variant draw ignores the holdout draw
    counts = [first.count("a"), first.count("b")]
    assert stats.chisquare(counts, [len(users) / 4, len(users) * 3 / 4]).pvalue > 0.001
    # the documented hash
    import hashlib
    u = int.from_bytes(hashlib.sha256(b"variant\x00cart_rescue\x00user-7").digest()[:8], "big") / 2 ** 64
    assert first[7] == ("a" if u < 0.25 else "b")
    # another campaign draws afresh
    other = [variant_for("other", u, spec.arms()) for u in users[:2_000]]
    assert other != first[:2_000]


def test_spec_variants_are_validated_and_optional():
    plain = parse_campaign(BASE)
    assert [v.name for v in plain.arms()] == ["default"] and plain.variants == []
    assert (plain.cost_per_message, plain.fixed_cost) == (0, 0)
    for bad, reason in [({"variants": [{"name": "a"}, {"name": "a"}]}, "differ"),
                        ({"variants": [{"name": "holdout"}]}, "holdout"),
                        ({"variants": [{"name": "a", "weight": 0}]}, "greater than 0"),
                        ({"variants": [{"name": "a", "weight": True}]}, "valid number"),
                        ({"variants": [{"name": f"v{i}"} for i in range(11)]}, "at most 10"),
                        ({"variants": [{"name": "a", "message": {"x": "y" * 10_001}}]}, "10000 bytes"),
                        ({"variants": [{"name": "a", "colour": "red"}]}, "Extra inputs"),
                        ({"cost_per_message": "0.01"}, "valid number"), ({"fixed_cost": -1}, "greater than"),
                        ({"fixed_cost": float("inf")}, "finite"), ({"variants": "a,b"}, "valid list")]:
        with pytest.raises(CampaignDefinitionError, match=reason):
            parse_campaign({**BASE, **bad})


def outcomes(rng: random.Random, n: int, rate: float, basket: float, sent: int = 1):
    return [(1, sent, (c := rng.random() < rate), round(rng.expovariate(1 / basket), 2) if c else 0.0)
            for _ in range(n)]


def test_analyse_reports_each_variant_against_the_holdout_with_roi():
    spec = parse_campaign({**BASE, "holdout_percent": 20, "cost_per_message": 0.05, "fixed_cost": 300,
                           "variants": [{"name": "reminder", "weight": 1},
                                        {"name": "discount", "weight": 1, "cost_per_message": 0.5}]})
    rng = random.Random(5)
    data = {"reminder": outcomes(rng, 4_000, 0.10, 50), "discount": outcomes(rng, 4_000, 0.16, 45),
            "holdout": outcomes(rng, 2_000, 0.08, 50)}
    report = analyse(spec, data)
    hold = report["holdout"]
    assert hold["users"] == 2_000 and hold["converted"] == sum(u[2] for u in data["holdout"])
    by_name = {v["name"]: v for v in report["variants"]}
    for name, v in by_name.items():
        users = data[name]
        conv = lift(len(users), sum(u[2] for u in users), 2_000, hold["converted"])
        assert v["conversion"]["absolute_lift_ci"] == conv["absolute_lift_ci"]
        (t, h), _ = st.winsorise([u[3] for u in users], [u[3] for u in data["holdout"]])
        assert v["revenue_per_user_lift"]["p_value"] == pytest.approx(stats.ttest_ind(t, h, equal_var=False).pvalue)
        per_message = 0.5 if name == "discount" else 0.05
        cost = len(users) * per_message + 300 * len(users) / 8_000
        assert v["cost"] == pytest.approx(cost)
        incremental = len(users) * (np.mean(t) - np.mean(h))
        assert v["incremental_revenue"] == pytest.approx(incremental)
        assert v["roi"] == pytest.approx((incremental - cost) / cost)
        assert v["roi_ci"][0] < v["roi"] < v["roi_ci"][1]
    holm = multipletests([by_name["reminder"]["conversion"]["p_value"], by_name["discount"]["conversion"]["p_value"]],
                         method="holm")[1]
    assert by_name["discount"]["conversion"]["p_value_holm"] == pytest.approx(holm[1])
    assert by_name["discount"]["conversion"]["verdict"] == "significant_increase"  # 16% vs 8% on 4,000/2,000
    assert report["overall"]["users"] == 8_000
    assert report["overall"]["cost"] == pytest.approx(by_name["reminder"]["cost"] + by_name["discount"]["cost"])
    assert any("Holm" in w for w in report["warnings"])


def test_analyse_warns_when_underpowered_and_without_holdout_or_cost():
    spec = parse_campaign(BASE)
    rng = random.Random(9)
    small = analyse(spec, {"default": outcomes(rng, 60, 0.1, 40), "holdout": outcomes(rng, 15, 0.1, 40)})
    warnings = small["variants"][0]["warnings"]
    assert any("default has 60 users" in w for w in warnings) and any("holdout has 15 users" in w for w in warnings)
    assert any("no cost" in w for w in small["warnings"]) and small["variants"][0]["roi"] is None
    # big enough arms but a small effect: the detectable lift exceeds the observed one
    close = analyse(spec, {"default": [(1, 1, i < 82, 30.0 if i < 82 else 0.0) for i in range(800)],
                           "holdout": [(1, 0, i < 80, 30.0 if i < 80 else 0.0) for i in range(800)]})
    v = close["variants"][0]
    assert v["conversion"]["absolute_lift"] == pytest.approx(2 / 800)
    assert v["conversion"]["mde_absolute"] == pytest.approx(st.conversion_mde(800, 800, 0.1)) and \
        v["conversion"]["mde_absolute"] > 0.03
    assert any("conversion lift detectable at 80% power" in w for w in v["warnings"])
    assert any("revenue per user lift detectable" in w for w in v["warnings"])
    assert v["conversion"]["verdict"] == "not_significant"
    none = analyse(spec, {"default": outcomes(rng, 500, 0.1, 40)})
    assert any("no holdout" in w for w in none["warnings"])
    assert none["variants"][0]["conversion"]["verdict"] == "insufficient_data"


def test_winsorising_keeps_the_orders_of_a_rare_conversion():
    """0.5% of users buy: the pooled 99th percentile is 0, the bound is taken over the orders instead."""
    treated = [0.0] * 1990 + [40.0, 55.0, 60.0, 70.0, 80.0, 90.0, 95.0, 100.0, 120.0, 5_000.0]
    holdout = [0.0] * 996 + [50.0, 60.0, 80.0, 90.0]
    (t, h), (low, high) = st.winsorise(treated, holdout)
    assert low == 0.0 and high == pytest.approx(np.percentile([v for v in treated + holdout if v > 0], 99))
    assert 120 < high < 5_000 and sum(t) == pytest.approx(sum(treated) - 5_000 + high) and h == holdout


def test_intervals_cover_a_known_effect_on_simulated_skewed_money():
    """200 simulated experiments with known rates and log-normal baskets: the conversion (Wald) and the
    revenue (winsorised Welch) 95% intervals hold the true differences about 95% of the time."""
    rng = np.random.default_rng(7)
    rates, mu, sigma = (0.12, 0.08), 4.0, 1.2
    true_revenue = (rates[0] - rates[1]) * math.exp(mu + sigma ** 2 / 2)
    covered = {"conversion": 0, "revenue": 0}
    for _ in range(200):
        t, h = [np.where(rng.random(n) < rate, rng.lognormal(mu, sigma, n), 0.0) for n, rate in ((1_000, rates[0]),
                                                                                                   (400, rates[1]))]
        low, high = lift(1_000, int((t > 0).sum()), 400, int((h > 0).sum()))["absolute_lift_ci"]
        covered["conversion"] += low <= rates[0] - rates[1] <= high
        low, high = st.welch(*st.winsorise(list(t), list(h))[0])["difference_ci"]
        covered["revenue"] += low <= true_revenue <= high
    assert 0.90 <= covered["conversion"] / 200 <= 0.99 and 0.90 <= covered["revenue"] / 200 <= 0.99, covered

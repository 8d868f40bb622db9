"""analysis.convert.plan: sensitivities against a by-hand replacement and numpy KL, the choice against brute
force over the measured table, the budget against count_macs of the converted network, and bad input."""

from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from analysis.convert import count_macs, ghostify
from analysis.convert.knapsack import BudgetError
from analysis.convert.plan import ReplacementPlan, choose_plan, plan_replacement
from analysis.data.overlap import OverlapError
from tests.helpers import PlanNet


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, 3, 16, 16, generator=g), torch.randn(16, 3, 16, 16, generator=g)


@pytest.fixture(scope="module")
def plan(data):
    calib, held = data
    return plan_replacement(PlanNet(), calib, macs=0.7, eval_images=held, ratios=(2, 4), progress=False)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def test_sensitivity_equals_a_by_hand_replacement(plan, data):
    calib, held = data
    model = PlanNet()
    for name, s in (("convs.2", 2), ("convs.4", 4)):
        donor, _ = ghostify(model, [name], ratio=s, init="fit", calibration_images=calib)  # fitted on calib only
        by_hand = copy.deepcopy(model)
        by_hand.convs[int(name.split(".")[1])] = donor.get_submodule(name)
        with torch.no_grad():
            p = _softmax(model(held).double().numpy())
            q = _softmax(by_hand(held).double().numpy())
        kl = (p * (np.log(p) - np.log(q))).sum(1)
        row = next(o for o in plan.options if (o.name, o.ratio) == (name, s))
        assert row.kl == pytest.approx(kl.mean(), rel=1e-6, abs=1e-12)
        assert row.kl_std == pytest.approx(kl.std(ddof=1), rel=1e-5)
        assert row.kl_max == pytest.approx(kl.max(), rel=1e-6)
        half = stats.t.ppf(0.975, kl.size - 1) * kl.std(ddof=1) / math.sqrt(kl.size)
        ratio = math.exp(half / kl.mean())  # the t interval's half-width taken to the log scale (KL > 0)
        assert (row.kl_low, row.kl_high) == pytest.approx((kl.mean() / ratio, kl.mean() * ratio), rel=1e-5)
        before, after = count_macs(model, held[:1]), count_macs(by_hand, held[:1])
        assert row.macs_saved == before.total_macs - after.total_macs > 0
        assert row.params_saved == before.params - after.params > 0


def test_sensitivity_is_measured_off_the_calibration_images(data):
    calib, held = data
    on_calib = plan_replacement(PlanNet(), calib, macs=0.9, eval_images=held, layers=["convs.3"], ratios=(4,),
                                progress=False)
    swapped = plan_replacement(PlanNet(), held, macs=0.9, eval_images=calib, layers=["convs.3"], ratios=(4,),
                               progress=False)
    assert on_calib.n_calibration == 10 and on_calib.n_evaluation == 16
    assert on_calib.options[0].kl != pytest.approx(swapped.options[0].kl, rel=1e-3)


@pytest.mark.parametrize("macs,params", [(0.7, None), (None, 0.6), (0.8, 0.75), (0.55, None)])
def test_the_plan_is_the_best_choice_from_its_table(plan, macs, params):
    exact = choose_plan(plan, macs, params, resolution=10**7 if params is None or macs is None else 3000)
    names = list(dict.fromkeys(o.name for o in plan.options))
    by = {n: [o for o in plan.options if o.name == n] for n in names}
    best = math.inf
    for picks in itertools.product(*[[None, *by[n]] for n in names]):
        chosen = [o for o in picks if o is not None]
        m = plan.macs_before - sum(o.macs_saved for o in chosen)
        p = plan.params_before - sum(o.params_saved for o in chosen)
        if (macs is None or m <= macs * plan.macs_before) and (params is None or p <= params * plan.params_before):
            best = min(best, sum(o.kl for o in chosen))
    assert exact.loss_lower_bound - 1e-15 <= best <= exact.predicted_loss + 1e-15
    if params is None or macs is None:
        assert exact.predicted_loss == pytest.approx(best, rel=1e-12)
    assert sum(o.chosen for o in exact.options) == len(exact.ratios)


@pytest.mark.parametrize("macs,params", [(0.7, None), (None, 0.6), (0.8, 0.75)])
def test_the_converted_network_meets_the_budget(plan, data, macs, params):
    calib, held = data
    chosen = choose_plan(plan, macs, params)
    model = PlanNet()
    new, res = ghostify(model, ratio=chosen.ratios, init="fit", calibration_images=calib)
    assert {r.name: r.ratio for r in res.replaced} == chosen.ratios
    before, after = count_macs(model, held[:1]), count_macs(new, held[:1])
    assert after.total_macs == chosen.macs_after and after.params == chosen.params_after
    if macs is not None:
        assert after.total_macs <= macs * before.total_macs
    if params is not None:
        assert after.params <= params * before.params


def test_the_plan_round_trips_and_prints(plan):
    back = ReplacementPlan.from_dict(json.loads(plan.to_json()))
    assert back == plan and back.ratios == plan.ratios and back.layers == list(plan.ratios)
    assert plan.to_csv().startswith("name,ratio,kl,kl_low,kl_high,")
    assert len(plan.rows()) == 4 * 2 and "predicted loss" in str(plan) and "convs.0" in plan.skipped
    assert plan.macs_fraction <= 0.7


def test_default_split_holds_out_half_the_images(data):
    calib, _ = data
    p = plan_replacement(PlanNet(), calib, macs=0.95, layers=["convs.4"], ratios=(2,), progress=False)
    assert p.n_calibration == 5 and p.n_evaluation == 5 and "seeded split" in p.evaluation


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5, True, "0.7", math.nan])
def test_a_budget_outside_0_1_is_refused(data, value):
    calib, held = data
    with pytest.raises(BudgetError, match=r"macs must be the fraction .* in \(0, 1\]"):
        plan_replacement(PlanNet(), calib, macs=value, eval_images=held, progress=False)
    with pytest.raises(BudgetError, match=r"params must be"):
        plan_replacement(PlanNet(), calib, macs=None, params=value, eval_images=held, progress=False)


def test_no_budget_and_an_unreachable_budget(plan, data):
    calib, held = data
    with pytest.raises(BudgetError, match="give a budget"):
        plan_replacement(PlanNet(), calib, macs=None, eval_images=held, progress=False)
    with pytest.raises(BudgetError, match=r"keeps MACs \d+\.\d% \(budget 10%\).*Raise the budget"):
        choose_plan(plan, macs=0.1)


def test_overlapping_calibration_and_evaluation_are_refused(data):
    calib, held = data
    with pytest.raises(OverlapError, match="share 2 image"):
        plan_replacement(PlanNet(), calib, eval_images=torch.cat([held, calib[:2]]), progress=False)


def test_an_evaluation_folder_without_images(tmp_path, data):
    from analysis._core.errors import NoImagesError

    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError, match="empty"):
        plan_replacement(PlanNet(), data[0], eval_images=str(tmp_path / "empty"), progress=False)


def _options(*rows):
    from analysis.convert.plan import LayerOption

    return [LayerOption(name, s, kl, 0, 0, 0, 0, 1, "t", macs, params) for name, s, kl, macs, params in rows]


def test_choose_plan_reads_the_budget_exactly_as_written():
    """0.29 of 100 MACs keeps 29, although 0.29 * 100 is 28.999… in floating point (it kept 28 before)."""
    from analysis.convert.plan import ReplacementPlan, choose_plan

    plan = ReplacementPlan(_options(("a", 2, 0.1, 71, 0), ("a", 3, 5.0, 72, 0)), {}, None, None, 100, 100, 100,
                           100, 0.0, 0.0, (1, 3, 16, 16))
    got = choose_plan(plan, macs=0.29)
    assert got.ratios == {"a": 2} and got.macs_after == 29 and got.predicted_loss == 0.1


def test_an_option_that_costs_more_than_its_conv_is_skipped_not_a_crash():
    from analysis.convert.plan import ReplacementPlan, choose_plan

    plan = ReplacementPlan(_options(("small", 2, 0.0, -10, -4), ("big", 2, 0.5, 60, 30)), {}, None, None, 100, 100,
                           100, 100, 0.0, 0.0, (1, 3, 16, 16))
    got = choose_plan(plan, macs=0.5)
    assert got.ratios == {"big": 2}
    assert "costs more than the conv (MACs 10 more)" in got.skipped["small (s=2)"]


def test_a_budget_reachable_only_finer_than_the_resolution_says_so():
    from analysis.convert.plan import ReplacementPlan, choose_plan

    total = 2_000_000
    plan = ReplacementPlan(_options(("a", 2, 0.1, 1_500_999, 10)), {}, None, None, total, 100, total, 100, 0.0, 0.0,
                           (1, 3, 16, 16))
    with pytest.raises(BudgetError, match="within reach .* pass resolution="):
        choose_plan(plan, macs=499_001 / total, params=1.0)
    assert choose_plan(plan, macs=499_001 / total, params=1.0, resolution=total).ratios == {"a": 2}
    with pytest.raises(BudgetError, match="cannot be met"):
        choose_plan(plan, macs=0.2)
    # one budget: the default resolution (units of 200 MACs) misses it, the one retry 10x finer meets it
    total = 20_000_000
    one = ReplacementPlan(_options(("a", 2, 0.1, 15_000_100, 0)), {}, None, None, total, 100, total, 100, 0.0, 0.0,
                          (1, 3, 16, 16))
    assert choose_plan(one, macs=0.249995).ratios == {"a": 2}
    with pytest.raises(BudgetError, match="within reach"):
        choose_plan(one, macs=0.249995, resolution=100_000)

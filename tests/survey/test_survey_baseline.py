"""The untrained baseline: a seeded re-initialised copy, BatchNorm re-estimated exactly as a hand-run train-mode
pass gives, and the survey's baseline statistics equal to the untrained network's maps folded by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis import survey
from analysis.survey.baseline import reestimate_batchnorm, untrained_copy
from tests.helpers import TinyNet


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)  # must stay in eval mode during the re-estimation
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.drop(torch.relu(self.bn1(self.conv1(x))))))


def test_untrained_copy_is_seeded_and_leaves_the_model_and_the_rng_alone():
    torch.manual_seed(0)
    model = Small().eval()
    with torch.no_grad():
        model.bn1.running_mean.fill_(3.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    a, b, c = untrained_copy(model, seed=1), untrained_copy(model, seed=1), untrained_copy(model, seed=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.conv1.weight, c.conv1.weight) and not torch.equal(a.conv1.weight, model.conv1.weight)
    assert torch.equal(a.bn1.running_mean, torch.zeros(6)) and torch.equal(a.bn1.running_var, torch.ones(6))


def test_untrained_copy_names_the_parameters_it_cannot_reset():
    import warnings

    from analysis.survey.baseline import PartlyTrainedWarning

    class Scaled(Small):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.full((6,), 0.5))  # owned by a module without reset_parameters

    model = Scaled().eval()
    with pytest.warns(PartlyTrainedWarning, match="1 parameter.*: scale;"):
        net = untrained_copy(model, seed=1)
    assert torch.equal(net.scale, model.scale) and not torch.equal(net.conv1.weight, model.conv1.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every parameter of a plain network is re-initialised: no warning
        untrained_copy(Small(), seed=1)


def test_batchnorm_re_estimation_equals_a_hand_run_train_mode_pass():
    torch.manual_seed(0)
    net = untrained_copy(Small().eval(), seed=3)
    g = torch.Generator().manual_seed(4)
    batches = [torch.randn(3, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g),
               torch.randn(4, 3, 8, 8, generator=g)]
    want = {"bn1": ([], []), "bn2": ([], [])}
    with torch.no_grad():
        for x in batches:  # by hand: batch statistics, normalisation with the biased variance, no dropout
            h = net.conv1(x)
            for name, t in (("bn1", h),):
                want[name][0].append(t.mean((0, 2, 3)))
                want[name][1].append(t.var((0, 2, 3), unbiased=True))
            m, v = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
            y = (h - m) / torch.sqrt(v + net.bn1.eps) * net.bn1.weight.view(1, -1, 1, 1) + net.bn1.bias.view(1, -1, 1, 1)
            h2 = net.conv2(torch.relu(y))
            want["bn2"][0].append(h2.mean((0, 2, 3)))
            want["bn2"][1].append(h2.var((0, 2, 3), unbiased=True))
    net.eval()
    seen = reestimate_batchnorm(net, batches)
    assert seen == 9 and not net.training and not net.bn1.training and net.bn1.momentum == 0.1
    for name in ("bn1", "bn2"):
        bn = getattr(net, name)
        means, variances = want[name]
        torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0), rtol=1e-5, atol=1e-6)
        assert int(bn.num_batches_tracked) == 3


def test_survey_folds_the_untrained_network_on_its_stated_subset():
    torch.manual_seed(0)
    model = TinyNet().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(12, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    result = survey(model, x, layers=["conv1", "conv2"], baseline="untrained", baseline_every=2,
                    baseline_positions=None, baseline_bn_images=4, seed=7, batch_size=5, progress=False)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # by hand: the same seeded copy, BN re-estimated on the first 4 images of the subset (pairs 0, 2, 4:
    # images 0, 1, 4, 5, 8, 9), then its conv outputs on the subset
    subset = [0, 1, 4, 5, 8, 9]
    net = untrained_copy(model, seed=7)
    reestimate_batchnorm(net, [x[[0, 1, 4, 5]]])  # the first 4 subset images, one BN batch (not the survey's)
    with torch.no_grad():
        c1 = net.conv1(x[subset])
        c2 = net.conv2(torch.relu(net.bn1(c1)))
    for name, maps in (("conv1", c1), ("conv2", c2)):
        layer = result[name]
        base = layer.baseline_stats.total()
        flat = maps.double().numpy().transpose(1, 0, 2, 3).reshape(maps.shape[1], -1)
        np.testing.assert_allclose(base.covariance.numpy(), np.cov(flat, bias=True), rtol=1e-4, atol=1e-6)
        assert base.images == 6 and layer.redundancy.baseline_images == 6
        u = layer.redundancy.scores["mean_sq_similarity"].untrained
        assert u is not None and u.low <= u.excess <= u.high
    assert result.meta["baseline"] == "untrained" and result.meta["baseline_every"] == 2
    # the printed table states the subset the baseline stands on
    assert "untrained baseline: every 2nd image pair, all positions, BatchNorm re-estimated on 4 images" \
        in str(result)


def test_baseline_needs_a_source_it_can_read_twice():
    model = TinyNet().eval()
    from analysis import GhostmapsError

    with pytest.raises(GhostmapsError, match="read again"):
        survey(model, (torch.randn(2, 3, 8, 8) for _ in range(2)), layers="conv2", baseline="untrained",
               progress=False)


def test_the_baseline_does_not_depend_on_the_survey_batch_size():
    """BN is re-estimated in fixed batches (``BN_BATCH``), so batch_size changes neither its running statistics
    nor any untrained score (it did by ~1e-3 when the survey's own batches were used)."""
    from analysis.survey.stream import BN_BATCH

    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(40, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    runs = [survey(model, x, layers=["conv1", "conv2"], baseline="untrained", baseline_bn_images=BN_BATCH + 4,
                   groups=4, batch_size=b, progress=False) for b in (4, 7)]
    for name in ("conv1", "conv2"):
        a, b = (r[name].redundancy.scores["mean_sq_similarity"].untrained for r in runs)
        assert a.value == pytest.approx(b.value, rel=1e-6, abs=1e-9)
        ta, tb = (r[name].baseline_stats.total() for r in runs)
        np.testing.assert_allclose(ta.covariance.numpy(), tb.covariance.numpy(), rtol=1e-5, atol=1e-8)

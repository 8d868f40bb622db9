"""analysis.verify_replacement and plots.verification, checked against independent computations."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from analysis import GhostmapsError, plots, verify_replacement
from analysis.convert.ghostify import ghostify


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.head = nn.Conv2d(16, 16, 1, bias=True)
        self.unused = nn.Linear(100, 100)  # registered but never run: must not count
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = torch.relu(self.head(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def pair():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    new, res = ghostify(net, layers=["conv", "head"], ratio=2, dw_size=3, init="fit", calibration_images=x)
    return net, new, x, res


def test_numbers_match_hand_computations(pair):
    net, new, x, _ = pair
    rep = verify_replacement(net, new, x, latency_runs=2)
    # params: hand count over modules that run (unused Linear left out)
    before = 3 * 8 * 9 + 8 * 16 * 9 + 16 * 16 + 16 + 16 * 10 + 10
    ghost_conv = 8 * 8 * 9 + 8 * (9 + 1)
    ghost_head = 16 * 8 + 8 + 8 * (9 + 1)
    after = 3 * 8 * 9 + ghost_conv + ghost_head + 16 * 10 + 10
    assert (rep.params_before, rep.params_after) == (before, after)
    hw = 100
    assert rep.macs_before == (3 * 8 * 9 + 8 * 16 * 9 + 16 * 16) * hw + 16 * 10
    assert rep.macs_after == (3 * 8 * 9 + 8 * 8 * 9 + 8 * 9 + 16 * 8 + 8 * 9) * hw + 16 * 10
    # logits: direct cosine / KL / agreement
    with torch.no_grad():
        a, b = net(x).double(), new(x).double()
    assert rep.logits_cosine == pytest.approx(float(F.cosine_similarity(a, b).mean()), rel=1e-9)
    kl = F.kl_div(F.log_softmax(b, 1), F.log_softmax(a, 1), log_target=True, reduction="batchmean")
    assert rep.logits_kl == pytest.approx(float(kl), rel=1e-6, abs=1e-12)
    assert rep.top1_agreement == pytest.approx(float((a.argmax(1) == b.argmax(1)).double().mean()))
    assert rep.n_images == 6 and rep.latency_before_ms > 0 and rep.latency_ratio > 0


def test_layer_errors(pair):
    net, new, x, res = pair
    rep = verify_replacement(net, new, x, latency_runs=0)
    assert [c.name for c in rep.layers] == ["conv", "head"]
    assert rep.latency_ratio is None
    conv, head = rep.layers
    # the first replaced layer sees the original input: in-network == isolated == the fit's own error
    assert conv.rel_error == pytest.approx(conv.isolated_rel_error, rel=1e-9)
    assert conv.rel_error == pytest.approx(res.replaced[0].fit_error, rel=1e-3)
    assert head.isolated_rel_error == pytest.approx(res.replaced[1].fit_error, rel=1e-3)
    # direct recomputation of the head's in-network error and cosine
    outs = {}
    for model, key in ((net, "o"), (new, "r")):
        h = model.head.register_forward_hook(lambda m, i, o, key=key: outs.__setitem__(key, o.detach().double()))
        with torch.no_grad():
            model(x)
        h.remove()
    o, r = outs["o"], outs["r"]
    want = float(((r - o) ** 2).sum() / ((o - o.mean((0, 2, 3), keepdim=True)) ** 2).sum())
    assert head.rel_error == pytest.approx(want, rel=1e-9)
    assert head.cosine == pytest.approx(float(F.cosine_similarity(o.flatten(), r.flatten(), dim=0)), rel=1e-9)
    assert (conv.params_before, conv.params_after) == (8 * 16 * 9, 8 * 8 * 9 + 8 * 10)


def test_identity_replacement_is_perfect(pair):
    net, _, x, _ = pair
    same = verify_replacement(net, net, x, latency_runs=0)
    assert same.layers == [] and same.top1_agreement == 1.0
    assert same.logits_cosine == pytest.approx(1.0) and same.logits_kl == pytest.approx(0.0, abs=1e-12)
    assert same.params_ratio == 1.0 and same.macs_ratio == 1.0


def test_outputs_and_plot(pair, tmp_path):
    net, new, x, _ = pair
    rep = verify_replacement(net, new, x, latency_runs=1)
    d = json.loads(rep.to_json())
    assert d["params_before"] == rep.params_before and len(d["layers"]) == 2
    frame = rep.to_frame()
    assert list(frame["name"]) == ["conv", "head"] and "isolated_rel_error" in frame
    assert "top-1 agreement" in str(rep)
    fig = plots.verification(rep)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    fig2 = plots.verification([verify_replacement(net, net, x, latency_runs=0), rep], labels=["0", "2"])
    xs = fig2.axes[1].lines[0].get_xdata()
    assert xs[0] == 0 and xs[1] == pytest.approx(1 - rep.macs_after / rep.macs_before)
    assert plots.save_figure(fig, tmp_path / "v.png")[0].stat().st_size > 0


def test_models_not_modified(pair):
    net, new, x, _ = pair
    net.train()
    snap = {k: v.clone() for k, v in new.state_dict().items()}
    verify_replacement(net, new, x, latency_runs=1)
    assert net.training and not new.training
    assert all(torch.equal(v, snap[k]) for k, v in new.state_dict().items())


def test_bad_input(pair):
    net, new, x, _ = pair
    with pytest.raises(GhostmapsError, match="images"):
        verify_replacement(net, new, torch.zeros(0, 3, 10, 10))
    with pytest.raises(GhostmapsError, match="not modules of both"):
        verify_replacement(net, new, x, layers=["nope"])
    with pytest.raises(GhostmapsError, match="latency_runs"):
        verify_replacement(net, new, x, latency_runs=-1)
    with pytest.raises(GhostmapsError, match="VerificationReport"):
        plots.verification([])


def test_latency_is_labelled_with_its_device(pair):
    net, new, x, _ = pair
    rep = verify_replacement(net, new, x, latency_runs=1)
    assert rep.latency_device == "cpu" and rep.to_dict()["latency_device"] == "cpu"
    assert "latency (cpu) " in str(rep) and "CPU latency" not in str(rep)
    off = verify_replacement(net, new, x, latency_runs=0)
    assert off.latency_device is None and "latency not measured" in str(off)


def test_latency_synchronizes_cuda_around_each_timed_run(monkeypatch):
    from analysis.convert import verify

    synced: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    verify._synchronize(torch.device("cpu"))
    assert synced == []
    verify._synchronize(torch.device("cuda:0"))
    assert synced == [torch.device("cuda:0")]

    events: list[str] = []
    monkeypatch.setattr(verify, "_synchronize", lambda device: events.append(f"sync {device}"))
    model = nn.Identity()
    model.register_forward_hook(lambda *_: events.append("forward"))
    verify._latency_ms(model, torch.zeros(1, 3, 4, 4), runs=2)
    assert events == ["forward"] + ["sync cpu", "forward", "sync cpu"] * 2  # warm-up, then timed runs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_times_the_kernels_not_the_launch():
    from analysis.convert.verify import _latency_ms

    weight = torch.randn(4096, 4096, device="cuda")

    class Heavy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(50):
                x = torch.tanh(x @ weight)
            return x

    model, x = Heavy(), torch.randn(4096, 4096, device="cuda")
    model(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model(x)
    torch.cuda.synchronize()
    want_ms = 1000 * (time.perf_counter() - t0)
    assert _latency_ms(model, x, runs=3) >= 0.5 * want_ms


def test_low_precision_models_are_verified_in_their_dtype(pair):
    net, new, x, _ = pair
    import copy

    rep = verify_replacement(copy.deepcopy(net).to(torch.bfloat16), copy.deepcopy(new).to(torch.bfloat16), x,
                             latency_runs=0)
    ref = verify_replacement(net, new, x, latency_runs=0)
    assert rep.logits_cosine == pytest.approx(ref.logits_cosine, abs=0.02)


def test_csv_without_pandas_matches_the_frame(pair):
    import csv
    import io

    net, new, x, _ = pair
    rep = verify_replacement(net, new, x, latency_runs=0)
    rows = list(csv.DictReader(io.StringIO(rep.to_csv())))
    frame = rep.to_frame()
    assert [r["name"] for r in rows] == list(frame["name"]) == ["conv", "head"]
    assert [float(r["rel_error"]) for r in rows] == pytest.approx(list(frame["rel_error"]))

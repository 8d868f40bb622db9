"""analysis.verify_replacement and plots.verification, checked against independent computations."""

from __future__ import annotations

import copy
import csv
import io
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from scipy import stats
from torch import nn

from analysis import GhostmapsError, NoImagesError, load_images, plots, verify_replacement
from analysis.convert import latency as latency_mod
from analysis.convert.ghostify import ghostify
from analysis.data.labelled import LabelError
from analysis.data.models import default_preprocess
from analysis.data.overlap import OverlapError


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


class Fixed(nn.Module):
    """Returns given logits, one row per image, looked up by the image's first pixel (its index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].round().long()]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    new, res = ghostify(net, layers=["conv", "head"], ratio=2, dw_size=3, init="fit", calibration_images=x)
    ev = torch.randn(12, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    return net, new, ev, res, x


def test_numbers_match_hand_computations(pair):
    net, new, x, _, _ = pair
    rep = verify_replacement(net, new, x, latency_repeats=2, latency_batches=(1, 4))
    before = 3 * 8 * 9 + 8 * 16 * 9 + 16 * 16 + 16 + 16 * 10 + 10  # the unused Linear is left out
    ghost_conv = 8 * 8 * 9 + 8 * (9 + 1)
    ghost_head = 16 * 8 + 8 + 8 * (9 + 1)
    assert (rep.params_before, rep.params_after) == (before, 3 * 8 * 9 + ghost_conv + ghost_head + 16 * 10 + 10)
    assert rep.macs_before == (3 * 8 * 9 + 8 * 16 * 9 + 16 * 16) * 100 + 16 * 10
    assert rep.macs_after == (3 * 8 * 9 + 8 * 8 * 9 + 8 * 9 + 16 * 8 + 8 * 9) * 100 + 16 * 10
    with torch.no_grad():
        a, b = net(x).double(), new(x).double()
    cos = F.cosine_similarity(a, b).numpy()
    kl = (F.softmax(a, 1) * (F.log_softmax(a, 1) - F.log_softmax(b, 1))).sum(1).numpy()
    agree = (a.argmax(1) == b.argmax(1)).numpy()
    top5 = (b.topk(5, 1).indices == a.argmax(1, keepdim=True)).any(1).numpy()
    ag = rep.agreement
    assert ag.logits_cosine.value == pytest.approx(cos.mean(), rel=1e-9)
    t = stats.t(11).ppf(0.975) * cos.std(ddof=1) / np.sqrt(12)
    assert (ag.logits_cosine.low, ag.logits_cosine.high) == pytest.approx((cos.mean() - t, cos.mean() + t))
    assert ag.logits_kl.value == pytest.approx(kl.mean(), rel=1e-6, abs=1e-12)
    assert ag.top1.value == pytest.approx(agree.mean()) and ag.top5.value == pytest.approx(top5.mean())
    ci = stats.binomtest(int(agree.sum()), 12).proportion_ci(method="exact")
    assert (ag.top1.low, ag.top1.high) == pytest.approx((ci.low, ci.high))
    assert rep.n_images == 12 and rep.accuracy is None
    assert [r.batch for r in rep.latency.timings] == [1, 4] and rep.latency.fused
    assert rep.latency_before_ms > 0 and rep.latency_ratio > 0
    assert "not checked" in rep.calibration


def test_layer_errors(pair):
    net, new, x, res, cal = pair
    rep = verify_replacement(net, new, cal, latency_repeats=0)
    assert [c.name for c in rep.layers] == ["conv", "head"] and rep.latency is None
    conv, head = rep.layers
    # the first replaced layer sees the original input: in-network == isolated == the fit's own error
    assert conv.rel_error == pytest.approx(conv.isolated_rel_error, rel=1e-9)
    outs, ins = {}, {}

    def record(key):
        def hook(m, i, o):
            ins[key], outs[key] = i[0].detach(), o.detach().double()
        return hook

    for model, key in ((net, "o"), (new, "r")):
        h = model.head.register_forward_hook(record(key))
        with torch.no_grad():
            model(cal)
        h.remove()
    o, r = outs["o"], outs["r"]

    def rel(a, b):
        return float(((a - b) ** 2).sum() / ((b - b.mean((0, 2, 3), keepdim=True)) ** 2).sum())

    assert head.rel_error == pytest.approx(rel(r, o), rel=1e-9)
    # isolated: the replaced head run by hand on the *original* network's input to the head
    with torch.no_grad():
        iso = new.head(ins["o"]).double()
    assert head.isolated_rel_error == pytest.approx(rel(iso, o), rel=1e-9)
    assert head.isolated_rel_error < head.rel_error  # the conv's error reaches the head in the network only
    assert head.cosine == pytest.approx(float(F.cosine_similarity(o.flatten(), r.flatten(), dim=0)), rel=1e-9)
    assert (conv.params_before, conv.params_after) == (8 * 16 * 9, 8 * 8 * 9 + 8 * 10)
    quick = verify_replacement(net, new, cal, latency_repeats=0, layer_images=0)  # no per-layer checks
    assert quick.layers == [] and quick.n_replaced == 2 and quick.summary()["replaced_layers"] == 2
    assert "2 layers replaced (per-layer errors not measured)" in str(quick)
    assert type(quick).from_dict(json.loads(quick.to_json())).replaced == ["conv", "head"]


def test_labelled_accuracy_mcnemar_and_losing_classes_on_hand_made_predictions():
    n, k = 40, 10
    labels = torch.arange(n) % k
    rng = np.random.default_rng(0)
    pred_o = labels.clone()
    pred_o[[0, 1, 2, 3]] = (labels[[0, 1, 2, 3]] + 1) % k  # original wrong on 4 images
    pred_r = labels.clone()
    pred_r[[0, 5, 15, 25, 35, 6, 16]] = (labels[[0, 5, 15, 25, 35, 6, 16]] + 2) % k  # class 5 loses 4, 6 loses 2

    def logits(pred: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(rng.normal(0, 0.1, (n, k)))
        out[torch.arange(n), pred] = 5.0
        return out

    lo, lr = logits(pred_o), logits(pred_r)
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 2, 2).clone()
    rep = verify_replacement(Fixed(lo), Fixed(lr), x, labels=labels, latency_repeats=0, layer_images=0)
    acc = rep.accuracy
    ok_o, ok_r = (pred_o == labels).numpy(), (pred_r == labels).numpy()
    assert acc.original_top1.value == ok_o.mean() and acc.replaced_top1.value == ok_r.mean()
    ci = stats.binomtest(int(ok_r.sum()), n).proportion_ci(method="exact")
    assert (acc.replaced_top1.low, acc.replaced_top1.high) == pytest.approx((ci.low, ci.high))
    b, c = int((ok_o & ~ok_r).sum()), int((~ok_o & ok_r).sum())
    assert (acc.mcnemar_top1.b, acc.mcnemar_top1.c) == (b, c) == (6, 3)
    assert acc.mcnemar_top1.p_value == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)
    assert acc.difference_top1.value == pytest.approx(ok_r.mean() - ok_o.mean())
    assert acc.difference_top1.low < acc.difference_top1.value < acc.difference_top1.high
    assert [w.label for w in acc.worst_classes[:2]] == [5, 6]
    assert acc.worst_classes[0].loss == pytest.approx(1.0) and acc.worst_classes[0].n == 4
    assert "McNemar" in str(rep) and rep.summary()["mcnemar_top1_p"] == pytest.approx(acc.mcnemar_top1.p_value)
    # the same through a Dataset and a DataLoader yielding (image, label)
    ds = torch.utils.data.TensorDataset(x, labels)
    for source in (ds, torch.utils.data.DataLoader(ds, batch_size=7)):
        again = verify_replacement(Fixed(lo), Fixed(lr), source, latency_repeats=0, layer_images=0).accuracy
        assert again.to_dict() == acc.to_dict()
    with pytest.raises(LabelError, match="outside the model's 10 classes"):
        verify_replacement(Fixed(lo), Fixed(lr), x, labels=labels + 5, latency_repeats=0, layer_images=0)


def _write(folder, value: int, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 10, 3), value, np.uint8)).save(folder / f"{name}.png")


def test_class_folders_give_labels_and_bad_folders_are_clear_errors(pair, tmp_path):
    net, new, _, _, _ = pair
    pre = default_preprocess(10, 10)
    for label, value in ((0, 10), (0, 60), (3, 110), (7, 200)):
        _write(tmp_path / "eval" / str(label), value, f"img{value}")
    rep = verify_replacement(net, new, tmp_path / "eval", transform=pre, latency_repeats=0)
    assert rep.accuracy is not None and rep.n_images == 4 and rep.accuracy.n_classes_seen == 3
    x = torch.stack([pre(Image.fromarray(np.full((10, 10, 3), v, np.uint8))) for v in (10, 60, 110, 200)])
    with torch.no_grad():
        want = (net(x).argmax(1) == torch.tensor([0, 0, 3, 7])).float().mean().item()
    assert rep.accuracy.original_top1.value == pytest.approx(want)
    _write(tmp_path / "bad" / "12", 5, "a")  # class 12 of a 10-class model
    with pytest.raises(LabelError, match="outside the model's 10 classes"):
        verify_replacement(net, new, tmp_path / "bad", transform=pre, latency_repeats=0)
    _write(tmp_path / "named" / "cat", 5, "a")
    with pytest.raises(LabelError, match="class_names"):
        verify_replacement(net, new, tmp_path / "named", transform=pre, latency_repeats=0)
    (tmp_path / "empty" / "0").mkdir(parents=True)
    (tmp_path / "empty" / "1").mkdir(parents=True)
    with pytest.raises(NoImagesError, match="no image files"):
        verify_replacement(net, new, tmp_path / "empty", transform=pre, latency_repeats=0)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(NoImagesError):
        verify_replacement(net, new, tmp_path / "nothing", transform=pre, latency_repeats=0)


def test_calibration_images_are_refused_unless_allowed(pair):
    net, new, ev, _, cal = pair
    with pytest.raises(OverlapError, match="allow_calibration"):
        verify_replacement(net, new, cal, calibration=cal, latency_repeats=0)
    with pytest.raises(OverlapError):
        verify_replacement(net, new, torch.cat([ev[:3], cal[2:3]]), calibration=cal, latency_repeats=0)
    rep = verify_replacement(net, new, cal, calibration=cal, allow_calibration=True, latency_repeats=0)
    assert rep.calibration.startswith("OVERLAP ALLOWED") and "OVERLAP" in str(rep)
    ok = verify_replacement(net, new, ev, calibration=cal, latency_repeats=0)
    assert ok.calibration.startswith("disjoint")
    pre = default_preprocess(12, 10)
    views = load_images("samples:chelsea,china", pre, views=4)
    with pytest.raises(OverlapError, match="chelsea"):  # another crop of a calibration photo still overlaps
        verify_replacement(net, new, views, calibration=load_images("samples:calibration", pre), latency_repeats=0)


def test_views_get_intervals_over_photos(pair):
    net, new, _, _, _ = pair
    views = load_images("samples:evaluation", default_preprocess(12, 10), views=24, seed=0)
    rep = verify_replacement(net, new, views, calibration=load_images("samples:calibration", default_preprocess(12, 10)),
                             latency_repeats=0)
    assert rep.agreement.n_photos == 8 and rep.n_images == 24
    assert "8 photos" in rep.agreement.top1.method and rep.agreement.logits_cosine.groups == 8
    assert rep.agreement.logits_kl.method.endswith("log scale")  # and the printed report says so
    assert f"; KL {rep.agreement.logits_kl.method})" in str(rep)


def test_identity_replacement_is_perfect(pair):
    net, _, x, _, _ = pair
    same = verify_replacement(net, net, x, latency_repeats=0)
    assert same.layers == [] and same.top1_agreement == 1.0 and same.agreement.top5.value == 1.0
    assert same.logits_cosine == pytest.approx(1.0) and same.logits_kl == pytest.approx(0.0, abs=1e-12)
    assert same.params_ratio == 1.0 and same.macs_ratio == 1.0


def test_outputs_round_trip_and_plot(pair, tmp_path):
    net, new, x, _, _ = pair
    rep = verify_replacement(net, new, x, latency_repeats=2, latency_batches=(1,))
    d = json.loads(rep.to_json())
    assert d["params_before"] == rep.params_before and len(d["layers"]) == 2
    assert "concatenation" in d["macs_leave_out"]
    back = type(rep).from_dict(d)
    assert back.to_dict() == rep.to_dict()
    rows = list(csv.DictReader(io.StringIO(rep.to_csv(tmp_path / "layers.csv"))))
    assert [r["name"] for r in rows] == ["conv", "head"] and (tmp_path / "layers.csv").exists()
    assert list(rep.to_frame()["name"]) == ["conv", "head"]
    assert "top-1" in str(rep) and "latency (cpu" in str(rep)
    fig = plots.verification(rep)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    fig2 = plots.verification([verify_replacement(net, net, x, latency_repeats=0), rep], labels=["0", "2"])
    xs = fig2.axes[1].lines[0].get_xdata()
    assert xs[0] == 0 and xs[1] == pytest.approx(1 - rep.macs_after / rep.macs_before)
    assert plots.save_figure(fig, tmp_path / "v.png")[0].stat().st_size > 0


def test_models_not_modified(pair):
    net, new, x, _, _ = pair
    net.train()
    snap = {k: v.clone() for k, v in new.state_dict().items()}
    threads = torch.get_num_threads()
    verify_replacement(net, new, x, latency_repeats=2, latency_batches=(2,), threads=1)
    assert net.training and not new.training and torch.get_num_threads() == threads
    assert all(torch.equal(v, snap[k]) for k, v in new.state_dict().items())
    net.eval()


def test_bad_input(pair):
    net, new, x, _, _ = pair
    with pytest.raises(GhostmapsError, match="images"):
        verify_replacement(net, new, torch.zeros(0, 3, 10, 10))
    with pytest.raises(GhostmapsError, match="not modules of both"):
        verify_replacement(net, new, x, layers=["nope"])
    with pytest.raises(GhostmapsError, match="latency_repeats"):
        verify_replacement(net, new, x, latency_repeats=-1)
    with pytest.raises(GhostmapsError, match="VerificationReport"):
        plots.verification([])


def test_latency_interleaves_pins_threads_and_folds_bn(monkeypatch):
    order: list[tuple[str, int]] = []
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    b = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    real = latency_mod._time

    def spy(model: nn.Module, x: torch.Tensor) -> float:
        order.append(("a" if model[0].kernel_size == (3, 3) else "b", torch.get_num_threads()))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # folded
        return real(model, x)

    monkeypatch.setattr(latency_mod, "_time", spy)
    res = latency_mod.measure_latency(a, b, torch.randn(2, 3, 8, 8), batch_sizes=(1, 3), repeats=4, warmup=1,
                                      threads=1)
    assert [o for o, _ in order[:8]] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert {t for _, t in order} == {1} and res.threads == 1 and res.fused
    row = res.row(3)
    assert row.original_q1_ms <= row.original_ms <= row.original_q3_ms and row.ratio > 0
    assert any(isinstance(m, nn.BatchNorm2d) for m in a.modules())  # the caller's model keeps its BN


def test_latency_synchronizes_cuda_around_each_timed_run(monkeypatch):
    synced: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    latency_mod._sync(torch.device("cpu"))
    assert synced == []
    latency_mod._sync(torch.device("cuda:0"))
    assert synced == [torch.device("cuda:0")]
    events: list[str] = []
    monkeypatch.setattr(latency_mod, "_sync", lambda device: events.append(f"sync {device}"))
    model = nn.Identity()
    model.register_forward_hook(lambda *_: events.append("forward"))
    latency_mod._time(model, torch.zeros(1, 3, 4, 4))
    assert events == ["sync cpu", "forward", "sync cpu"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_times_the_kernels_not_the_launch():
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
    assert latency_mod._time(model, x) >= 0.5 * want_ms


def test_low_precision_models_are_verified_in_their_dtype(pair):
    net, new, x, _, _ = pair
    rep = verify_replacement(copy.deepcopy(net).to(torch.bfloat16), copy.deepcopy(new).to(torch.bfloat16), x,
                             latency_repeats=0)
    ref = verify_replacement(net, new, x, latency_repeats=0)
    assert rep.logits_cosine == pytest.approx(ref.logits_cosine, abs=0.02)

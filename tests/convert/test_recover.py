"""recover: distillation of a converted network from the original (tiny CNNs, a few steps, CPU)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis.convert.augment import apply_crops, apply_mix, draw_crops, draw_mix
from analysis.convert.ghostify import ghostify
from analysis.convert.recover import RecoverResult, recover
from tests.helpers import TinyNet, free_port, randomize_

FAST = {"lr": 1e-2, "batch_size": 6, "progress": False}


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    teacher = randomize_(TinyNet(), seed).eval()
    torch.manual_seed(seed)  # ghostify(init=None) draws PyTorch's initialisation from the global RNG
    student, _ = ghostify(teacher, init=None)  # random Ghost convs: far from the teacher
    return teacher, student


def _images(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kl(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    """KL(teacher || student) per image, from torch's own kl_div (independent of recover's loss code)."""
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student(x), 1), F.log_softmax(teacher(x), 1), log_target=True,
                              reduction="batchmean"))


# -- augmentation -------------------------------------------------------------------------------------------
def test_crops_identity_flip_and_half_against_interpolate():
    x = torch.randn(2, 3, 8, 8)
    full = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]] * 2, dtype=torch.float64)
    torch.testing.assert_close(apply_crops(x, full), x, atol=1e-5, rtol=0)
    flipped = full.clone()
    flipped[:, 4] = -1
    torch.testing.assert_close(apply_crops(x, flipped), x.flip(-1), atol=1e-5, rtol=0)
    left_half = torch.tensor([[0.5, 1.0, -0.5, 0.0, 1.0]] * 2, dtype=torch.float64)
    expected = F.interpolate(x[..., :4], size=(8, 8), mode="bilinear", align_corners=False)
    # the last column samples half a source pixel past the crop's edge (continuous crop), where cropping first
    # clamps to the edge pixel; every other column is the same bilinear sample
    torch.testing.assert_close(apply_crops(x, left_half)[..., :7], expected[..., :7], atol=1e-5, rtol=0)


def test_drawn_crops_are_seeded_and_inside_the_image():
    a = draw_crops(500, torch.Generator().manual_seed(3), scale=(0.25, 1.0))
    b = draw_crops(500, torch.Generator().manual_seed(3), scale=(0.25, 1.0))
    assert torch.equal(a, b)
    w, h, cx, cy, sign = a.T
    assert ((w > 0) & (w <= 1) & (h > 0) & (h <= 1)).all()
    assert ((cx.abs() <= 1 - w + 1e-12) & (cy.abs() <= 1 - h + 1e-12)).all()
    assert 0.4 < float((sign < 0).double().mean()) < 0.6  # about half flipped
    assert float((w * h).min()) >= 0.25 - 1e-9  # clipping a side to the image never shrinks below the drawn area


def test_mixup_and_cutmix_against_direct_pixels():
    x, y = torch.randn(3, 2, 10, 8), torch.randn(3, 2, 10, 8)
    mix = draw_mix(3, torch.Generator().manual_seed(0))
    assert sorted(mix[:, 0].long().tolist()) == [0, 1, 2] and torch.equal(mix, draw_mix(3, torch.Generator().manual_seed(0)))
    lam = mix[:, 1].float()
    torch.testing.assert_close(apply_mix(x, y, mix, "mixup"), lam.view(3, 1, 1, 1) * x + (1 - lam.view(3, 1, 1, 1)) * y)
    box = torch.tensor([[0.0, 0.75, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.0, 0.75, 0.0, 0.0]], dtype=torch.float64)
    out = apply_mix(x, y, box, "cutmix")
    # image 0: a centred box of half the width and height (area 1 - 0.75) from the partner, by direct indexing
    want = x[0].clone()
    want[:, 3:8, 2:6] = y[0][:, 3:8, 2:6]
    assert torch.equal(out[0], want)
    assert torch.equal(out[1], y[1])  # lam = 0: all partner
    want = x[2].clone()  # a box centred on the corner: clipped to its quarter inside the image
    want[:, 0:3, 0:2] = y[2][:, 0:3, 0:2]
    assert torch.equal(out[2], want)
    with pytest.raises(ValueError, match="kind"):
        apply_mix(x, y, box, "blend")


def test_mixed_recover_is_seeded_learns_and_differs_from_unmixed():
    teacher, student = _pair()
    held = _images(16, seed=9)
    a, ra = recover(student, teacher, _images(), steps=40, mix="cutmix", **FAST)
    b, rb = recover(student, teacher, _images(), steps=40, mix="cutmix", **FAST)
    plain_run, _ = recover(student, teacher, _images(), steps=40, **FAST)
    assert _same(_state(a), _state(b)) and ra.losses == rb.losses and ra.settings["mix"] == "cutmix"
    assert not _same(_state(a), _state(plain_run))
    assert _kl(teacher, a, held) < 0.5 * _kl(teacher, student, held)
    m, _ = recover(student, teacher, _images(), steps=40, mix="mixup", **FAST)
    assert _kl(teacher, m, held) < 0.5 * _kl(teacher, student, held)


# -- training -----------------------------------------------------------------------------------------------
def test_loss_falls_and_heldout_kl_drops_and_inputs_untouched():
    teacher, student = _pair()
    t_before, s_before = _state(teacher), _state(student)
    flags = [m.training for m in teacher.modules()]
    held = _images(16, seed=9)
    trained, result = recover(student, teacher, _images(), steps=40, **FAST)
    assert result.final_loss < 0.5 * result.first_loss
    assert _kl(teacher, trained, held) < 0.5 * _kl(teacher, student, held)  # on images it never saw
    assert _same(_state(teacher), t_before) and _same(_state(student), s_before)
    assert [m.training for m in teacher.modules()] == flags
    assert trained is not student and not trained.training


@pytest.mark.parametrize("loss", ["features", "both"])
def test_feature_losses_fall(loss):
    teacher, student = _pair()
    _, result = recover(student, teacher, _images(), steps=30, loss=loss, **FAST)
    assert result.final_loss < 0.5 * result.first_loss
    assert result.settings["features"] == "input of fc"


def test_features_of_a_model_with_a_features_module():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean((2, 3)))

    torch.manual_seed(0)
    teacher = Net()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.features[2].weight.mul_(0.5)
    _, result = recover(student, teacher, _images(), steps=40, loss="features", **{**FAST, "lr": 2e-3})
    assert result.settings["features"] == "output of features"
    assert result.final_loss < 0.5 * result.first_loss


def test_bn_modes():
    teacher, student = _pair()
    frozen, _ = recover(student, teacher, _images(), steps=5, bn="freeze", **FAST)
    torch.testing.assert_close(frozen.bn1.running_mean, student.bn1.running_mean, rtol=0, atol=0)
    trained, _ = recover(student, teacher, _images(), steps=5, **FAST)  # the default: train mode
    assert not torch.equal(trained.bn1.running_mean, student.bn1.running_mean)


def test_deterministic_under_a_seed():
    teacher, student = _pair()
    a, ra = recover(student, teacher, _images(), steps=10, **FAST)
    b, rb = recover(student, teacher, _images(), steps=10, **FAST)
    c, _ = recover(student, teacher, _images(), steps=10, seed=1, **FAST)
    assert _same(_state(a), _state(b)) and ra.losses == rb.losses
    assert not _same(_state(a), _state(c))


class _Stop(Exception):
    pass


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    teacher, student = _pair()
    x = _images()
    settings = {**FAST, "steps": 12, "bn": "train"}  # train mode: BN statistics must resume exactly too
    whole, whole_result = recover(student, teacher, x, **settings)
    calls = {"n": 0}

    def stop_after(module, args):  # the deep copy keeps the hook: interrupt the run after 9 training forwards
        calls["n"] += 1
        if calls["n"] > 10:  # 1 probe forward + 9 steps
            raise _Stop

    handle = student.register_forward_pre_hook(stop_after)
    ckpt = tmp_path / "recover.pt"
    with pytest.raises(_Stop):
        recover(student, teacher, x, checkpoint=ckpt, checkpoint_every=4, **settings)
    handle.remove()
    assert ckpt.is_file()
    resumed, result = recover(student, teacher, x, checkpoint=ckpt, checkpoint_every=4, resume=True, **settings)
    assert result.resumed_from == 8
    assert _same(_state(resumed), _state(whole))
    assert result.losses == whole_result.losses
    with pytest.raises(GhostmapsError, match="another settings"):
        recover(student, teacher, x, checkpoint=ckpt, resume=True, **{**settings, "lr": 0.5})


def test_result_round_trip_and_print():
    teacher, student = _pair()
    _, r = recover(student, teacher, _images(), steps=3, **FAST)
    assert RecoverResult.from_dict(json.loads(r.to_json())) == r
    assert len(r.rows()) == 3 and "recover: 3 steps" in str(r)
    none, r0 = recover(student, teacher, _images(), steps=0, **FAST)
    assert r0.losses == [] and _same(_state(none), _state(student))


@pytest.mark.parametrize("change,words", [
    ({"steps": -1}, ["steps", ">= 0"]),
    ({"images": torch.zeros(0, 3, 16, 16)}, ["images", "at least one image"]),
    ({"loss": "mse"}, ["loss", "kl"]),
    ({"bn": "sync"}, ["bn", "freeze"]),
    ({"mix": "blend"}, ["mix", "cutmix"]),
    ({"lr": 0}, ["lr", "positive"]),
    ({"resume": True}, ["resume", "checkpoint"]),
    ({"teacher": "wrong head"}, ["shape", "same classes"]),
    ({"features": "nope", "loss": "features"}, ["features", "submodule"]),
    ({"seed": 1.5}, ["seed", "int >= 0"]),  # was truncated to 1
    ({"seed": -1}, ["seed", "int >= 0"]),
    ({"seed": None}, ["seed", "int >= 0"]),  # was a TypeError
    ({"scale": 0.5}, ["scale", "(low, high)"]),  # was a TypeError
    ({"scale": (0.5, "1")}, ["scale", "(low, high)"]),
])
def test_bad_input_is_a_clear_error(change, words):
    teacher, student = _pair()
    change = dict(change)
    if change.get("teacher") == "wrong head":
        change["teacher"] = copy.deepcopy(teacher)
        change["teacher"].fc = nn.Linear(16, 7)
    kwargs = {"student": student, "teacher": teacher, "images": _images(), "steps": 2, **FAST, **change}
    with pytest.raises(GhostmapsError) as exc:
        recover(**kwargs)
    for w in words:
        assert w in str(exc.value)


# -- distributed: two gloo processes on the CPU -------------------------------------------------------------
def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        teacher, student = _pair()
        trained, result = recover(student, teacher, _images(), steps=15, bn="freeze", distributed=True, **FAST)
        bn_trained, _ = recover(student, teacher, _images(), steps=4, distributed=True, **FAST)  # BN statistics
        torch.save({"state": trained.state_dict(), "losses": result.losses, "world": result.world_size,
                    "bn_state": bn_trained.state_dict()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_agree_and_loss_falls(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == 2 and _same(r0["state"], r1["state"]) and r0["losses"] == r1["losses"]
    assert _same(r0["bn_state"], r1["bn_state"])  # train-mode BN: running statistics averaged over the ranks
    losses = r0["losses"]
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]
    # the two shares make up the global batch: the first loss (before any update) is the single process's
    teacher, student = _pair()
    _, single = recover(student, teacher, _images(), steps=1, bn="freeze", **FAST)
    assert losses[0] == pytest.approx(single.losses[0], rel=1e-5)


def test_distributed_without_torchrun_is_refused(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    teacher, student = _pair()
    with pytest.raises(GhostmapsError, match="torchrun"):
        recover(student, teacher, _images(), steps=1, distributed=True, **FAST)

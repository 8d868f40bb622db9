"""analysis.survey end to end on a tiny CNN: numerics against independent computations, plain-data results,
no side effects on the model, and the distributed run against the single-process one."""

from __future__ import annotations

import copy
import csv
import io
import json
import math

import numpy as np
import pytest
import torch

from analysis import GhostmapsError, Survey, UnknownLayerError, survey
from tests.helpers import TinyNet, free_port
from tests.oracles import numpy_similarity


def images(n: int = 10, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_maps(model: TinyNet, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The two conv outputs, computed by calling the modules by hand (no hooks), in float64."""
    with torch.no_grad():
        c1 = model.conv1(x)
        c2 = model.conv2(torch.relu(model.bn1(c1)))
    return {"conv1": c1.double().numpy(), "conv2": c2.double().numpy()}




@pytest.mark.parametrize("metric", ["cosine", "pearson"])
@pytest.mark.parametrize("batch", [1, 3, 10])
def test_survey_similarity_equals_concatenated_maps(tiny, metric, batch):
    x = images()
    result = survey(tiny, x, layers=["conv1", "conv2"], metric=metric, batch_size=batch,
                    progress=False)
    assert result.names == ["conv1", "conv2"]
    for name, maps in reference_maps(tiny, x).items():
        layer = result[name]
        np.testing.assert_allclose(layer.similarity.matrix.numpy(), numpy_similarity(maps, metric), atol=2e-5)
        assert layer.shape == maps.shape[1:] and layer.redundancy.images == 10
        flat = maps.transpose(1, 0, 2, 3).reshape(maps.shape[1], -1)
        np.testing.assert_allclose(layer.stats.total().std.numpy(), flat.std(1), rtol=1e-4)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out.update({f"{prefix}{k}.{i}": x for i, x in enumerate(v)})
        else:
            out[prefix + k] = v
    return out


def assert_same_scores(a, b) -> None:
    assert a.scores.keys() == b.scores.keys()
    for k, s in a.scores.items():
        want, got = _flat(s.to_dict()), _flat(b.scores[k].to_dict())
        assert want.keys() == got.keys(), k
        for field, value in want.items():
            assert (got[field] is None) == (value is None), (k, field)
            if value is not None:
                assert got[field] == pytest.approx(value, rel=1e-4, abs=1e-7), (k, field)


def test_scores_and_intervals_do_not_depend_on_batch_size(tiny):
    x = images(12)
    runs = [survey(tiny, x, layers="conv2", batch_size=b, progress=False) for b in (1, 5, 12)]
    for other in runs[1:]:
        assert_same_scores(runs[0]["conv2"].redundancy, other["conv2"].redundancy)


def test_survey_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = TinyNet().train()
    model.bn1.eval()  # a mixed state must come back exactly
    state = {k: v.clone() for k, v in model.state_dict().items()}
    survey(model, images(6), layers="Conv2d", progress=False)
    assert model.training and not model.bn1.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_results_are_plain_data_and_round_trip_through_a_file(tiny, tmp_path):
    result = survey(tiny, images(8), layers=["conv1", "conv2", "pool"], progress=False)
    assert result["pool"].shape == (16, 1, 1)  # 1×1 spatial maps are fine
    text = result.to_csv(tmp_path / "s.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "pool"]
    assert float(rows[1]["ghost_fraction"]) == result["conv2"].redundancy.scores["ghost_fraction"].observed
    assert (tmp_path / "s.csv").read_text() == text
    frame = result.to_frame()
    assert list(frame.index) == ["conv1", "conv2", "pool"] and "participation_ratio_null" in frame
    assert "mean_sq_similarity_null_excess_low" in frame and "ghost_fraction_half_a" in frame
    data = json.loads(result.to_json())
    assert data["meta"]["images"] == 8 and len(data["layers"]) == 3
    path = result.save(tmp_path / "s.pt")
    assert not list(tmp_path.glob(".*tmp"))
    back = Survey.load(path)
    assert back.to_dict() == result.to_dict()
    assert torch.equal(back["conv1"].similarity.matrix, result["conv1"].similarity.matrix)
    again = back.rescore(threshold=0.5)
    assert again.meta["threshold"] == 0.5 and again["conv2"].redundancy.scores["groups"].low is None
    assert again["conv2"].redundancy.scores["groups"].observed <= result["conv2"].redundancy.scores["groups"].observed
    assert back.rescore(layers=["conv2"]).names == ["conv2"]
    compact = Survey.load(result.save(tmp_path / "compact.pt", groups=False))
    assert compact["conv2"].stats.groups == 1 and compact["conv2"].stats.group_gram is None
    np.testing.assert_allclose(compact["conv2"].similarity.matrix, result["conv2"].similarity.matrix)
    rescored = compact.rescore()["conv2"].redundancy
    assert rescored.scores["mean_sq_similarity"].low is None and any("no intervals" in n for n in rescored.notes)
    # without groups the jackknife bias correction is gone too: the raw mean S² (noise floor included), said so
    assert rescored.scores["mean_sq_similarity"].observed > result["conv2"].redundancy.scores[
        "mean_sq_similarity"].observed
    assert any("no sample-size correction" in n for n in rescored.notes) and "note: no intervals" in str(rescored)
    assert "NOT corrected for sample size" in str(compact.rescore())
    assert "NOT corrected" not in str(result)
    assert rescored.scores["groups"].baseline == result["conv2"].redundancy.scores["groups"].baseline
    light = Survey.load(result.save(tmp_path / "light.pt", stats=False))
    assert light.to_dict() == result.to_dict()
    with pytest.raises(GhostmapsError, match="statistics"):
        light["conv1"].similarity  # noqa: B018
    with pytest.raises(GhostmapsError, match="survey file"):
        Survey.load(tmp_path / "missing.pt")
    print(result)  # printable
    assert "conv2" in str(result)


def test_progress_bar_counts_images(tiny, capsys):
    survey(tiny, images(5), layers="conv2", batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "survey" in err and "5/5" in err and "img" in err


def test_dataloader_source_and_limit(tiny):
    x = images(9)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(9)), batch_size=4)
    a = survey(tiny, loader, layers="conv2", progress=False)
    b = survey(tiny, x, layers="conv2", progress=False, batch_size=2)
    assert_same_scores(a["conv2"].redundancy, b["conv2"].redundancy)
    np.testing.assert_allclose(a["conv2"].similarity.matrix, b["conv2"].similarity.matrix, atol=1e-6)
    limited = survey(tiny, loader, layers="conv2", progress=False, limit=5)
    assert limited.meta["images"] == 5


def test_image_files_and_sample_photos(tiny):
    result = survey(tiny, "samples:chelsea,china", layers="conv2", progress=False)
    assert result.meta["images"] == 2 and result["conv2"].shape == (16, 112, 112)


def test_fp16_model_and_input_give_finite_scores(tiny):
    result = survey(tiny.half(), images(4).half(), layers=["conv1", "conv2"], progress=False)
    for layer in result:
        assert torch.isfinite(layer.similarity.matrix).all()
        assert all(math.isfinite(s.observed) for s in layer.redundancy.scores.values())


def test_bad_input_is_a_clear_error(tiny):
    with pytest.raises(GhostmapsError, match="metric"):
        survey(tiny, images(2), metric="euclid", progress=False)
    with pytest.raises(UnknownLayerError, match="conv9"):
        survey(tiny, images(2), layers="conv9", progress=False)
    with pytest.raises(GhostmapsError, match="device"):
        survey(tiny, images(2), device="meta", progress=False)
    with pytest.raises(GhostmapsError, match="N×C×H×W"):
        survey(tiny, torch.zeros(2, 3), progress=False)
    with pytest.raises(GhostmapsError, match="torchrun"):
        survey(tiny, images(2), distributed=True, progress=False)
    with pytest.raises(GhostmapsError, match="batch_size"):
        survey(tiny, images(2), batch_size=0, progress=False)
    data = torch.utils.data.TensorDataset(images(4))
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=0)
    with pytest.raises(GhostmapsError, match="DistributedSampler"):
        survey(tiny, torch.utils.data.DataLoader(data, sampler=sampler), distributed=True, progress=False)


# -- distributed: two gloo processes on the CPU ---------------------------------------------------------------
def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = TinyNet().eval()
        result = survey(model, images(11), layers=["conv1", "conv2"], batch_size=3,
                        progress=False, distributed=True)
        if rank == 1:  # every process holds the full result; check the one that is not rank 0
            result.save(out)
    finally:
        dist.destroy_process_group()


def test_distributed_survey_equals_single_process(tmp_path):
    out = tmp_path / "dist.pt"
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = survey(TinyNet().eval(), images(11), layers=["conv1", "conv2"], batch_size=4,
                    progress=False)
    dist_result = Survey.load(out)
    assert dist_result.meta["world_size"] == 2 and dist_result.meta["images"] == 11
    for name in ("conv1", "conv2"):
        a, b = single[name], dist_result[name]
        np.testing.assert_allclose(b.similarity.matrix, a.similarity.matrix, atol=1e-5)  # float32 products
        assert b.groups.to_dict() == a.groups.to_dict()
        assert [(p.i, p.j) for p in b.pairs] == [(p.i, p.j) for p in a.pairs]
        assert [p.score for p in b.pairs] == pytest.approx([p.score for p in a.pairs], abs=1e-5)
        assert_same_scores(a.redundancy, b.redundancy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_survey_on_cuda_matches_the_cpu():
    model = TinyNet().eval()
    x = images(6)
    a = survey(model, x, layers=["conv1", "conv2"], progress=False)
    b = survey(copy.deepcopy(model).cuda(), x, layers=["conv1", "conv2"], progress=False,
               device="cuda")
    for name in a.names:
        np.testing.assert_allclose(b[name].similarity.matrix, a[name].similarity.matrix, atol=1e-5)
        assert b[name].redundancy.scores["groups"].observed == a[name].redundancy.scores["groups"].observed


def _filled(result, name: str = "conv2") -> list[int]:
    return result[name].stats.filled_groups


def test_generator_source_spreads_its_images_over_every_group(tiny):
    x = images(10)
    result = survey(tiny, (x[i:i + 3] for i in range(0, 10, 3)), layers="conv2", progress=False)
    assert result.meta["chunk"] == 2 and _filled(result) == list(range(5))  # pair j in group j mod 16
    red = result["conv2"].redundancy
    assert red.scores["mean_sq_similarity"].low is not None and red.interval_groups == 5 and not red.notes


def test_dataloader_with_limit_uses_the_limited_length(tiny):
    x = images(40)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(40)), batch_size=4)
    a = survey(tiny, loader, layers="conv2", progress=False, limit=20)
    b = survey(tiny, x[:20], layers="conv2", progress=False)
    assert a.meta["chunk"] == b.meta["chunk"] == 2 and _filled(a) == list(range(10))
    assert_same_scores(a["conv2"].redundancy, b["conv2"].redundancy)


def test_dataloader_drop_last_counts_only_the_images_it_yields(tiny):
    x = images(42)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(42)), batch_size=4,
                                         drop_last=True)
    result = survey(tiny, loader, layers="conv2", progress=False, groups=3)
    assert result.meta["images"] == 40 and result.meta["chunk"] == 12  # 2·⌊40 / 6⌋, not 2·⌊42 / 6⌋ = 14
    assert _filled(result) == list(range(3))


def test_one_group_note_says_how_many_images_were_seen():
    from analysis.measure.scores import redundancy
    from analysis.stats import GroupedStats

    maps = torch.relu(torch.randn(10, 4, 3, 3, generator=torch.Generator().manual_seed(0)))
    stats = GroupedStats(groups=4, chunk=16).update(maps).finish()
    notes = redundancy(stats).notes
    assert any("no intervals" in n and "10 images, 1 group(s) filled" in n for n in notes)


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"threshold": float("nan")}, {"positions": 0},
                                 {"level": 1.0}, {"linkage": "ward"}, {"groups": 0}, {"metric": "l2"},
                                 {"batch_size": 0}, {"pairs": -2}, {"baseline": "random"},
                                 {"baseline_every": 0}, {"checkpoint_every": 0}])
def test_bad_settings_are_refused_before_any_forward_pass(bad):
    model = TinyNet().eval()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(GhostmapsError, match=next(iter(bad))):
        survey(model, images(4), layers="conv2", progress=False, **bad)
    assert calls == []


def test_bf16_model_with_image_files_runs_in_the_model_dtype():
    model = TinyNet().eval()
    reference = survey(model, "samples:chelsea,china", layers="conv2", progress=False)
    low = copy.deepcopy(model).to(torch.bfloat16)
    result = survey(low, "samples:chelsea,china", layers="conv2", progress=False)
    assert result.meta["images"] == 2 and next(low.parameters()).dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: the pooled similarities agree to about 1e-2
    np.testing.assert_allclose(result["conv2"].similarity.matrix, reference["conv2"].similarity.matrix, atol=3e-2)


def _edge_worker(rank: int, world: int, port: int, out: str) -> None:
    import json as json_

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    report: dict[str, object] = {}
    try:
        model = TinyNet().eval()
        # one photo for two processes: process 1's share is empty and must not raise
        one = survey(model, "samples:chelsea", layers="conv2", progress=False, distributed=True)
        report["one_photo_images"] = one.meta["images"]
        # a generator of images of two sizes: the pair (0, 1) goes to process 0, and images of different sizes
        # are not paired (no null); process 1 has nothing to do
        mixed = survey(model, iter([images(1, 12), images(1, 16, seed=1)]), layers="conv2",
                       progress=False, distributed=True)
        report["mixed_images"] = mixed.meta["images"]
        report["mixed_baseline"] = mixed["conv2"].redundancy.scores["groups"].baseline

        class FailsOnOne(TinyNet):
            def forward(self, x):
                if dist.get_rank() == 1:
                    raise RuntimeError("boom on purpose")
                return super().forward(x)

        try:
            survey(FailsOnOne().eval(), images(4), layers="conv2", progress=False, distributed=True)
        except GhostmapsError as exc:
            report["error"] = str(exc)
    finally:
        with open(f"{out}.{rank}.json", "w") as f:
            json_.dump(report, f)
        dist.destroy_process_group()


def test_distributed_edge_cases_neither_hang_nor_disagree(tmp_path):
    out = str(tmp_path / "edge")
    torch.multiprocessing.spawn(_edge_worker, args=(2, free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        report = json.loads(open(f"{out}.{rank}.json").read())
        assert report["one_photo_images"] == 1 and report["mixed_images"] == 2
        assert report["mixed_baseline"] is None  # position sums of different sizes are dropped, not summed
        assert "process 1" in report["error"] and "boom on purpose" in report["error"]


def test_backend_follows_the_survey_device():
    from analysis.stats.distributed import process_group_backend

    assert process_group_backend(torch.device("cpu")) == "gloo" and process_group_backend(torch.device("cuda", 0)) == "nccl"

def test_position_subsets_estimate_the_similarity_within_0_02_and_say_so(tiny):
    x = images(64, size=48, seed=3)
    exact = survey(tiny, x, layers=["conv1", "conv2"], progress=False)
    sub = survey(tiny, x, layers=["conv1", "conv2"], progress=False, positions=256)
    for name in ("conv1", "conv2"):  # 48×48 and 24×24 maps: 2304 and 576 positions, 256 folded per image
        diff = (sub[name].similarity.matrix - exact[name].similarity.matrix).abs().max()
        assert 0 < diff < 0.02, (name, float(diff))
        assert sub[name].redundancy.estimated and not exact[name].redundancy.estimated
    assert sub.meta["positions"] == 256 and "estimated from 256 positions per image" in str(sub)
    assert sub.rows()[0]["estimated"] is True

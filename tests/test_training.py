"""Training on generated clips with the tiny presets: overfitting, exact resume, stage 2 from
stage 1, DDP (gloo, two processes) equal to one process, and an agent-loadable export."""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from model.checkpoints import load_pretrained
from model.training.checkpointing import list_checkpoints, load_training_checkpoint
from model.training.config import config_from_dict, load_config
from model.training.dataset import WindowDataset
from model.training.index import TRAIN, read_index
from model.training.prepare_data import PrepareSettings, prepare
from model.training.train import (
    Distributed,
    build_model,
    prompt_tensors,
    run_training,
    sample_spec,
    validate,
)
from tests.b2d_synth import SynthClip, write_camera_labels, write_clip

# One window per clip; distinct skills and cameras. 16 frames give the windows t = 0 … 5; frame 0 has no
# speed (a Bench2Drive quirk), which removes t = 0 … 4 (they all read frame 0), leaving t = 5, whose front
# t and t-1 images are different frames. The clips are cut out of a drive at cruise speed.
CRUISE = dict(num_frames=16, standing_frames=0, overrides=((0, "speed", None),))
CLIPS = (
    (SynthClip(name="Accident_Town03_Route1_Weather1", speed=5.0, start_speed=5.0, **CRUISE, seed=11), "NULL"),
    (SynthClip(name="ParkingExit_Town04_Route2_Weather2", speed=2.0, start_speed=2.0, **CRUISE, yaw_rate=0.6, seed=12), "CAM_FRONT_LEFT"),
    (SynthClip(name="HighwayCutIn_Town06_Route3_Weather3", speed=8.0, start_speed=8.0, **CRUISE, yaw_rate=-0.2, seed=13), "CAM_BACK_RIGHT"),
    (SynthClip(name="BlockedIntersection_Town05_Route4_Weather4", speed=1.0, start_speed=1.0, **CRUISE, seed=14), "CAM_FRONT_RIGHT"),
)
PROMPT = [2, 17, 33, 108]  # fake ids of the tiny vocabulary, as in the reference fixtures


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("b2d")
    for spec, label in CLIPS:
        write_clip(base / "root", spec)
        write_camera_labels(base / "labels", spec.name, [label] * spec.num_frames)
    prepare(base / "root", base / "index", PrepareSettings(str(base / "root"), str(base / "labels"), None, val_fraction=0.0))
    return base / "index"


def tiny_config(index_dir, out_dir, preset="tiny-drivemoe", stage=1, steps=8, lr=2e-3, batch=4, per_device=4, **model):
    return config_from_dict({
        "data": {"index": str(index_dir), "num_workers": 0},
        "model": {"preset": preset, "stage": stage, "prompt_token_ids": PROMPT, "camera_router_dropout": 0.0, **model},
        "optim": {"max_steps": steps, "global_batch_size": batch, "per_device_batch_size": per_device,
                  "action_lr": lr, "vlm_lr": lr, "warmup_steps": 2},
        "run": {"out_dir": str(out_dir), "save_every_steps": 3, "keep_last": 5, "tensorboard": False, "seed": 7},
    })


def evaluate(model, config, index_dir):
    index = read_index(index_dir)
    dataset = WindowDataset(index, index.rows(TRAIN), sample_spec(model.config, config.model.stage, True), model.config.stats)
    return validate(model, dataset, config, Distributed(), prompt_tensors(model.config))


@pytest.fixture(scope="module")
def stage1_run(index_dir, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stage1")
    config = tiny_config(index_dir, out, steps=150, lr=1e-2)
    torch.manual_seed(config.run.seed)
    before = evaluate(build_model(config, index_dir), config, index_dir)
    result = run_training(config)
    return config, before, result


@pytest.mark.slow
def test_tiny_drivemoe_overfits_a_few_windows(stage1_run, index_dir):
    config, before, result = stage1_run
    model, _ = load_pretrained(result.final_dir)
    after = evaluate(model, config, index_dir)
    flow = [r["flow_loss"] for r in result.losses]
    assert len(flow) == 150
    # the training flow loss (fresh noise every step) falls at least 10x
    assert np.mean(flow[-10:]) <= np.mean(flow[:5]) / 10, (np.mean(flow[:5]), np.mean(flow[-10:]))
    # on one fixed noise draw per window, evaluated before and after training, it falls too
    assert after["val_flow_loss"] <= before["val_flow_loss"] / 5, (before["val_flow_loss"], after["val_flow_loss"])
    # both routers get every window right (camera: argmax of the router; skill: the routing used when driving)
    assert after["camera_router"]["accuracy"] == 1.0, after["camera_router_table"]
    assert after["action_router"]["accuracy"] == 1.0, after["action_router_table"]
    assert before["camera_router"]["accuracy"] < 1.0 or before["action_router"]["accuracy"] < 1.0
    assert after["val_ade_m"] < before["val_ade_m"]


def test_export_is_the_agent_format_with_training_statistics(stage1_run, index_dir):
    _, _, result = stage1_run
    assert (result.final_dir / "model.safetensors").is_file()
    model, model_config = load_pretrained(result.final_dir)
    stats = json.loads((index_dir / "statistics.json").read_text())
    assert list(model_config.stats.fur_x) == pytest.approx(stats["fur_x"])
    assert model_config.sequence.prompt_token_ids == tuple(PROMPT)
    pixels = torch.zeros(1, 7, 3, 32, 32)
    ids, mask = prompt_tensors(model_config)
    out = model.infer_action(pixels, ids, mask, torch.zeros(1, 5, 10), goal=torch.zeros(1, 2))
    assert out["final_action"].shape == (1, 10, 2) and torch.isfinite(out["final_action"]).all()


@pytest.mark.slow
def test_stage2_starts_from_stage1(stage1_run, index_dir, tmp_path):
    _, _, stage1 = stage1_run
    config = tiny_config(index_dir, tmp_path / "stage2", stage=2, steps=1, lr=1e-9, init="pretrained",
                         init_path=str(stage1.final_dir))
    config = config.replace("data", statistics="model")
    start = build_model(config, index_dir)
    reference, _ = load_pretrained(stage1.final_dir)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(start.state_dict()[key], value, rtol=0, atol=0, msg=key)
    result = run_training(config)
    # stage-2 loss (all views, Gumbel selection, weights 5/5) of a trained model is far below a fresh model's
    assert result.losses[0]["flow_loss"] < 0.5
    fresh = run_training(tiny_config(index_dir, tmp_path / "fresh", stage=2, steps=1, lr=1e-9))
    assert result.losses[0]["loss"] < fresh.losses[0]["loss"] / 3


@pytest.mark.slow
def test_interrupted_and_resumed_run_reproduces_the_losses(index_dir, tmp_path):
    # global batch 2 of 4 windows: two optimiser steps per epoch, each of two accumulated micro-batches,
    # so the interruption after step 3 falls in the middle of epoch 1
    straight = run_training(tiny_config(index_dir, tmp_path / "a", steps=6, batch=2, per_device=1))
    config = tiny_config(index_dir, tmp_path / "b", steps=6, batch=2, per_device=1)
    first = run_training(config, stop_after_steps=3)
    assert first.final_dir is None and [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_00000003.pt"]
    payload = load_training_checkpoint(list_checkpoints(tmp_path / "b")[0])
    assert payload["position"] == {"step": 3, "epoch": 1, "batches_in_epoch": 1}
    second = run_training(config, resume=True)
    resumed = [r["loss"] for r in first.losses + second.losses]
    assert resumed == [r["loss"] for r in straight.losses]  # bit-exact
    metrics = [json.loads(line) for line in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 7))
    final_a, _ = load_pretrained(tmp_path / "a/final")
    final_b, _ = load_pretrained(tmp_path / "b/final")
    for key, value in final_a.state_dict().items():
        assert torch.equal(final_b.state_dict()[key], value), key


def _ddp_worker(rank, world, port, config, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = run_training(config)
        queue.put((rank, [r["loss"] for r in result.losses]))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_processes(config):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, config, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    return dict(queue.get() for _ in range(2))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(index_dir, tmp_path):
    single = run_training(tiny_config(index_dir, tmp_path / "one", stage=2, steps=3, batch=4, per_device=2))
    config = tiny_config(index_dir, tmp_path / "two", stage=2, steps=3, batch=4, per_device=1)
    assert config.run.ddp_bucket_view  # the default: gradients are views into DDP's buckets
    results = _train_two_processes(config)
    assert results[0] == results[1]
    np.testing.assert_allclose(results[0], [r["loss"] for r in single.losses], rtol=1e-5)
    # and the weights they end with agree. Key biases are left out: softmax ignores them, so their
    # gradient is rounding noise that Adam's normalisation turns into +-lr steps of arbitrary sign.
    one, _ = load_pretrained(tmp_path / "one/final")
    two, _ = load_pretrained(tmp_path / "two/final")
    width = one.config.joint.vlm.hidden_size
    differ = []
    for key, value in one.state_dict().items():
        other = two.state_dict()[key]
        if key.endswith("k_proj.bias"):
            continue
        if key.endswith("cross_attn.in_proj_bias"):  # [q; k; v]: drop the key part
            value, other = torch.cat([value[:width], value[2 * width:]]), torch.cat([other[:width], other[2 * width:]])
        if not torch.allclose(other, value, rtol=1e-4, atol=1e-6):
            differ.append(key)
    assert differ == []


class _Toy(nn.Module):
    """Parameters used always, on rank 1 only, in the first micro-batch only, in all steps but the second, never."""

    def __init__(self) -> None:
        super().__init__()
        self.always, self.rank_one, self.first_micro, self.not_step_1, self.never = (nn.Linear(4, 4) for _ in range(5))

    def forward(self, x, rank, step, micro):
        h = self.always(x)
        if rank == 1:
            h = h + self.rank_one(x)
        if micro == 0:
            h = h + self.first_micro(x)
        if step != 1:
            h = h + self.not_step_1(x)
        return h.square().mean()


TOY_NAMES = ("always", "rank_one", "first_micro", "not_step_1", "never")


def _bucket_view_worker(rank, world, store_file, queue):
    """Three optimiser steps of two micro-batches each, with and without DDP's bucket view, through the
    loop's GradientSync; per step the gradients the optimiser sees (value, storage address and size).
    A failure is sent as ("error", traceback) so the test shows it instead of waiting for a result."""
    try:
        _bucket_view_steps(rank, world, store_file, queue)
    except BaseException:
        import traceback

        queue.put((rank, ("error", traceback.format_exc())))


def _bucket_view_steps(rank, world, store_file, queue):
    from model.training.train import GradientSync

    torch.set_num_threads(1)
    # a file store: no TCP port chosen in advance that another process could take in between
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    try:
        out = {}
        for bucket_view in (True, False):
            torch.manual_seed(0)
            model = _Toy()
            layers = [getattr(model, name) for name in TOY_NAMES]
            params = [layer.weight for layer in layers] + [layer.bias for layer in layers]
            sync = GradientSync(Distributed(rank=rank, world_size=world), params, bucket_view)
            module = sync.wrap(model)
            optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
            steps = []
            for step in range(3):
                for micro in range(2):
                    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(100 * step + 10 * micro + rank))
                    with sync.micro_batch(last=micro == 1):
                        (module(x, rank, step, micro) / 2).backward()
                    if micro == 0:  # accumulated outside DDP's hooks (no_sync)
                        accumulated = {p.grad.untyped_storage().data_ptr() for p in params if p.grad is not None}
                sync.drop_unused()
                grads = [p.grad for p in params[:len(TOY_NAMES)]]  # the weights' gradients
                steps.append(([None if g is None else
                               (g.numpy().copy(), g.untyped_storage().data_ptr(), g.untyped_storage().nbytes())
                               for g in grads], accumulated))
                optimizer.step()
                sync.zero_grad(optimizer)
            sync.close()
            out[bucket_view] = steps, [p.detach().numpy().copy() for p in params]
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


def test_ddp_bucket_view_gradients_are_bucket_views_and_train_identically(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    store_file = tmp_path / "gloo_store"
    procs = [ctx.Process(target=_bucket_view_worker, args=(r, 2, str(store_file), queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:  # read before joining: a worker exits only once its result has left the pipe
        results = dict(queue.get(timeout=300) for _ in range(2))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [out[1] for out in results.values() if isinstance(out, tuple) and out[:1] == ("error",)]
    assert not errors, errors[0]
    assert all(p.exitcode == 0 for p in procs)
    all_params_bytes = len(TOY_NAMES) * (16 + 4) * 4  # one DDP bucket holds every parameter, fp32
    for rank in (0, 1):
        view_steps, view_weights = results[rank][True]
        copy_steps, copy_weights = results[rank][False]
        for step, ((view, accumulated), (copy, _)) in enumerate(zip(view_steps, copy_steps)):
            present = [name for name, g in zip(TOY_NAMES, view) if g is not None]
            # a parameter no process used in the step has no gradient (AdamW skips it), as with copies
            expected = ["always", "rank_one", "first_micro"] + (["not_step_1"] if step != 1 else [])
            assert present == expected, (rank, step)
            assert [g is not None for g in copy] == [g is not None for g in view], (rank, step)
            for name, v, c in zip(TOY_NAMES, view, copy):
                if v is not None:
                    np.testing.assert_array_equal(v[0], c[0], err_msg=f"rank {rank} step {step} {name}")
            # bucket view: every gradient lives in the one bucket, sized for all parameters (used or not),
            # also while micro-batches accumulate, from the first step on (in step 2 not_step_1 comes back
            # from None and gets a fresh tensor first); without it each gradient is a tensor of its own
            storages = {(v[1], v[2]) for v in view if v is not None}
            assert len(storages) == 1 and storages.pop()[1] == all_params_bytes, (rank, step)
            if step < 2:
                assert accumulated == {v[1] for v in view if v is not None}, (rank, step)
            assert len({c[1] for c in copy if c is not None}) == len(present)
        for v, c in zip(view_weights, copy_weights):
            np.testing.assert_array_equal(v, c)
    for a, b in zip(results[0][True][1], results[1][True][1]):
        np.testing.assert_array_equal(a, b)
    # the gradient of rank_one (used on rank 1 only) is averaged onto rank 0 too
    np.testing.assert_array_equal(results[0][True][0][0][0][1][0], results[1][True][0][0][0][1][0])


def test_drivepi0_trains_through_the_command_line(index_dir, tmp_path):
    from pathlib import Path

    from model.cli import main as drivemoe

    config = Path(__file__).resolve().parents[1] / "configs/train/tiny_drivepi0.yaml"
    code = drivemoe(["train", "--config", str(config), "--set", f"data.index={index_dir}",
                     "--set", f"run.out_dir={tmp_path / 'pi0'}", "--set", "optim.max_steps=2",
                     "--set", "optim.global_batch_size=4", "--set", "optim.per_device_batch_size=2"])
    assert code == 0
    metrics = [json.loads(line) for line in (tmp_path / "pi0/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[0]["camera_loss"] == 0.0
    model, model_config = load_pretrained(tmp_path / "pi0/final")
    assert not model_config.use_camera_router and model.camera_router is None
    # a bad value is a one-line error, not a traceback
    assert drivemoe(["train", "--config", str(config), "--set", "optim.optimizer=sgd"]) == 2


def test_config_files_load_and_bad_keys_are_named(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs/train"
    stage1 = load_config(root / "drivemoe_stage1.yaml", {"data.index": "x"})
    stage2 = load_config(root / "drivemoe_stage2.yaml", {"data.index": "x"})
    pi0 = load_config(root / "drivepi0.yaml", {"data.index": "x"})
    assert (stage1.optim.action_lr, stage1.optim.epochs, stage1.optim.global_batch_size) == (5e-5, 12, 128)
    assert (stage2.optim.action_lr, stage2.optim.epochs, stage2.model.init) == (5e-6, 6, "pretrained")
    assert pi0.optim.global_batch_size == 1024 and pi0.model.preset == "drivepi0-base"
    assert stage1.optim.accumulation_steps(8) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {index: x}\noptim: {learning_rate: 1}\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(bad)


@pytest.mark.slow
def test_trained_checkpoint_drives_the_agent_replay(stage1_run, index_dir, tmp_path):
    """The export goes straight into the agent stack: `drivemoe replay` over a training clip."""
    from model.cli import main as drivemoe

    _, _, result = stage1_run
    index = read_index(index_dir)
    clip = index.root / index.clips[0]
    code = drivemoe(["replay", "--clip", str(clip), "--model", str(result.final_dir), "--out", str(tmp_path / "replay"),
                     "--threads", "1"])
    assert code == 0
    lines = [json.loads(line) for line in (tmp_path / "replay/trace.jsonl").read_text().splitlines() if line.strip()]
    assert len(lines) >= 5
    assert all(len(line["waypoints"]) == 10 and line["camera_router"]["selected"] for line in lines)
    # at the trained window's frame the live stack picks the camera the router learned for it
    frame = int(index.arrays["frame"][index.arrays["clip"] == 0][0])
    label = ["CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"][
        int(index.arrays["camera"][index.arrays["clip"] == 0][0])]
    at_frame = [line for line in lines if line["frame"] == frame]
    assert at_frame and at_frame[0]["camera_router"]["selected"][0] == label, (frame, label, [l["frame"] for l in lines])


def test_drivemoe_refuses_an_index_without_camera_labels(tmp_path):
    from model.training.config import TrainConfigError

    spec, _ = CLIPS[0]
    write_clip(tmp_path / "root", spec)
    prepare(tmp_path / "root", tmp_path / "index", PrepareSettings(str(tmp_path / "root"), None, None, val_fraction=0.0))
    with pytest.raises(TrainConfigError, match="without --camera-labels"):
        run_training(tiny_config(tmp_path / "index", tmp_path / "run", batch=1, per_device=1))


def test_router_reports_and_displacement_errors_by_hand():
    from model.training.validation import camera_report, displacement_errors

    report = camera_report(np.array([0, 0, 2, 2, 2, 4]), np.array([0, 2, 2, 2, 0, 4]))
    rows = {r["class"]: r for r in report.per_class()}
    assert report.accuracy == pytest.approx(4 / 6)
    # FL: precision 1/2, recall 1/2; BACK: precision 2/3, recall 2/3; BR: 1, 1; absent classes left out
    assert rows["CAM_FRONT_LEFT"]["f1"] == pytest.approx(0.5) and rows["CAM_BACK"]["f1"] == pytest.approx(2 / 3)
    assert report.macro_f1 == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert "macro-F1" in report.table() and rows["CAM_FRONT_RIGHT"]["support"] == 0
    truth = np.zeros((2, 10, 2))
    predicted = truth.copy()
    predicted[0, :, 0] = 1.0  # 1 m off everywhere
    predicted[1, -1, 1] = 2.0  # only the last point 2 m off
    ade, fde = displacement_errors(predicted, truth)
    assert ade == pytest.approx((10 * 1.0 + 2.0) / 20) and fde == pytest.approx(1.5)


def test_activation_checkpointing_gives_the_same_gradients(index_dir, tmp_path, monkeypatch):
    import copy

    import torch.utils.checkpoint as checkpoint_module

    calls = []
    original_checkpoint = checkpoint_module.checkpoint
    monkeypatch.setattr(checkpoint_module, "checkpoint", lambda *a, **k: calls.append(1) or original_checkpoint(*a, **k))

    from model.training.train import enable_activation_checkpointing, per_sample_noise, to_model_batch

    config = tiny_config(index_dir, tmp_path / "ac", stage=2)
    torch.manual_seed(0)
    plain = build_model(config, index_dir).train()
    checkpointed = copy.deepcopy(plain)
    wrapped = enable_activation_checkpointing(checkpointed)
    assert wrapped >= 2 + 4 * (1 + 7)  # at least the 2 SigLIP layers and the 4 x 8 experts of the tiny preset
    assert enable_activation_checkpointing(checkpointed) == 0  # idempotent
    index = read_index(index_dir)
    dataset = WindowDataset(index, index.rows(TRAIN), sample_spec(plain.config, 2, False), plain.config.stats)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    noise = per_sample_noise(batch["row"], 0, 7, plain.config)
    inputs = to_model_batch(batch, prompt_tensors(plain.config), torch.device("cpu"), noise)
    losses = []
    for model in (plain, checkpointed):
        out = model.forward_train(inputs, 2, gumbel_noise=noise["gumbel"])
        out["total_loss"].backward()
        losses.append(float(out["total_loss"].detach()))
        if model is plain:
            assert calls == []
    assert len(calls) >= wrapped - 4 * 7  # every wrapped module ran checkpointed (unrouted experts may not run)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_image_cache_is_pixel_identical_and_decodes_only_what_a_stage_needs(index_dir, tmp_path):
    from model.config import ModelConfig
    from model.normalization import NormalizationStats

    index = read_index(index_dir)
    rows = index.rows(TRAIN)
    mc = ModelConfig.preset("tiny-drivemoe")
    stage1 = WindowDataset(index, rows, sample_spec(mc, 1, False), NormalizationStats())
    item = stage1[1]
    # front t, front t-1 and the labelled view only; the other candidate slots stay empty
    labelled = 2 + int(item["camera_id"])
    assert item["image_mask"].nonzero().flatten().tolist() == [0, 1, labelled]
    assert item["images"][[i for i in range(7) if i not in (0, 1, labelled)]].eq(0).all()
    assert not torch.equal(item["images"][0], item["images"][1])  # t and t-1 are different frames
    all_views = WindowDataset(index, rows, sample_spec(mc, 2, False), NormalizationStats())
    cached = WindowDataset(index, rows, sample_spec(mc, 2, False), NormalizationStats(), image_cache=tmp_path / "cache")
    first, again, plain = cached[0], cached[0], all_views[0]
    assert plain["image_mask"].all()
    assert torch.equal(first["images"], plain["images"]) and torch.equal(again["images"], plain["images"])
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 7


def test_tensorboard_logs_the_training_and_validation_scalars(index_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(index_dir, tmp_path / "tb", steps=3)
    config = config_from_dict({**json.loads(json.dumps(_as_dict(config))), "run": {**_as_dict(config)["run"], "tensorboard": True}})
    run_training(config)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert any(tag.startswith("train/") for tag in tags), tags
    losses = [tag for tag in tags if tag.startswith("train/") and "loss" in tag]
    assert losses and [e.step for e in events.Scalars(losses[0])] == [1, 2, 3]
    metrics = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    name = losses[0].removeprefix("train/")
    assert [e.value for e in events.Scalars(losses[0])] == pytest.approx([m[name] for m in metrics], rel=1e-6)


def _as_dict(config):
    import dataclasses

    return dataclasses.asdict(config)

"""`drivemoe download` against a stand-in hub on 127.0.0.1 (HF_ENDPOINT pointing at it) serving the
authors' tiny checkpoints under the released names and a small tokenizer in the gated repo: download,
conversion, the written agent configs loading in the leaderboard agent, resume after a cut transfer,
the cache, offline use, and one-line errors (no token, licence not accepted, no disk space, wrong file)."""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from hub_double import HubDouble, Repo
from model.cli import main as cli_main
from model.download import RELEASES, TOKENIZER_REPO
from test_prompt import build_fixture_vocab_tokenizer

GOOD_TOKEN = "hf_accepted_licence"
TINY_PRESET = {"drivemoe-base": "tiny-drivemoe", "drivepi0-base": "tiny-drivepi0"}


def release_bytes(reference: Path) -> dict[str, bytes]:
    """The tiny official checkpoints under the released file names (architecture and precision alike)."""
    tiny = {"drivemoe-base": "tiny_drivemoe", "drivepi0-base": "tiny_drivepi0"}
    return {release.filenames[0]: (reference / tiny[release.preset] /
                                   ("official_checkpoint_bf16.pt" if release.dtype == "bfloat16" else "official_checkpoint.pt")).read_bytes()
            for release in RELEASES.values()}


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory) -> dict[str, bytes]:
    folder = build_fixture_vocab_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def hub(drivemoe_reference, tokenizer_files, monkeypatch):
    import huggingface_hub.constants

    with HubDouble() as double:
        double.repos["rethinklab/DriveMoE"] = Repo(release_bytes(drivemoe_reference))
        double.repos[TOKENIZER_REPO] = Repo(dict(tokenizer_files), gated_tokens={GOOD_TOKEN})
        monkeypatch.setenv("HF_ENDPOINT", double.endpoint)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr("huggingface_hub.get_token", lambda: None)  # never the developer's stored token
        # 64 KiB chunks instead of 10 MiB, so that a cut inside a 1.3 MB file leaves bytes on disk
        monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
        yield double


def download(out: Path, *extra: str, release: str = "drivemoe-base-bf16", token: str | None = GOOD_TOKEN) -> int:
    args = ["download", release, "--out", str(out), "--preset", TINY_PRESET[RELEASES[release].preset], "--device", "cpu", *extra]
    return cli_main(args + (["--token", token] if token else []))


def test_download_converts_and_writes_agent_configs(hub, tmp_path, capsys) -> None:
    from agent.runtime.config import load_agent_config
    from model.checkpoints import load_pretrained

    weights = tmp_path / "weights"
    assert download(weights) == 0
    printed = capsys.readouterr().out
    official = weights / "official" / "DriveMoE_Base_bf16.pt"
    expected = hub.repos["rethinklab/DriveMoE"].files["DriveMoE_Base_bf16.pt"]
    assert official.read_bytes() == expected
    assert (weights / "official" / "DriveMoE_Base_bf16.pt.sha256").read_text().strip() == hashlib.sha256(expected).hexdigest()
    assert not list(weights.rglob("*.part")) and not list(weights.glob(".*partial"))
    # the tokenizer files only, fetched with the token
    assert (weights / "paligemma-tokenizer" / "tokenizer.json").is_file()
    assert all(auth == f"Bearer {GOOD_TOKEN}" for _, path, _, auth in hub.requests if TOKENIZER_REPO in path)

    folder = weights / "drivemoe-base-bf16"
    model, config = load_pretrained(folder)
    assert config.name == "tiny-drivemoe" and config.sequence.prompt_token_ids == (2, 17, 33, 108)
    assert str(model.dtype) == "torch.bfloat16"
    for preset in ("default", "official"):
        path = folder / f"agent_{preset}.yaml"
        assert str(path.resolve()) in printed
        agent_config = load_agent_config(path)
        assert Path(agent_config.checkpoint) == folder.resolve()
        assert (agent_config.preset, agent_config.device) == (preset, "cpu")

    # a second run transfers nothing and converts nothing
    before = len([r for r in hub.requests if r[0] == "GET"])
    assert download(weights) == 0
    assert len([r for r in hub.requests if r[0] == "GET"]) == before
    assert "already converted" in capsys.readouterr().out
    # other conversion settings convert again, from the file already there
    assert download(weights, "--dtype", "float32") == 0
    assert "already converted" not in capsys.readouterr().out
    assert str(load_pretrained(folder)[0].dtype) == "torch.float32"
    assert len([r for r in hub.requests if r[0] == "GET"]) == before


def test_written_config_drives_the_leaderboard_agent(hub, tmp_path, drivemoe_reference, monkeypatch) -> None:
    import carla
    import cv2

    sys.path.insert(0, str(Path(__file__).resolve().parent / "leaderboard_double"))
    from leaderboard.autoagents import autonomous_agent
    from leaderboard.utils.route_manipulation import RoadOption, location_to_gps

    from agent import drivemoe_agent
    from agent.runtime.sensor_frames import GNSS_ID, IMU_ID, SPEED_ID

    weights = tmp_path / "weights"
    assert download(weights) == 0
    assert download(weights, release="drivepi0-base-fp32") == 0
    monkeypatch.delenv("SAVE_PATH", raising=False)
    frames = {}
    for camera, name in {"CAM_FRONT": "f", "CAM_FRONT_LEFT": "fl", "CAM_FRONT_RIGHT": "fr", "CAM_BACK": "b",
                         "CAM_BACK_LEFT": "bl", "CAM_BACK_RIGHT": "br"}.items():
        frames[camera] = cv2.cvtColor(cv2.imread(str(drivemoe_reference / "sample_frame" / f"example_{name}.jpg")), cv2.COLOR_BGR2BGRA)
    for release, preset in (("drivemoe-base-bf16", "default"), ("drivemoe-base-bf16", "official"), ("drivepi0-base-fp32", "default")):
        agent = getattr(drivemoe_agent, drivemoe_agent.get_entry_point())("localhost", 2000, False)
        world = [(carla.Transform(carla.Location(x=float(i), y=0.0)), RoadOption.LANEFOLLOW) for i in range(200)]
        gps = [(location_to_gps(42.0, 2.0, float(i), 0.0), RoadOption.LANEFOLLOW) for i in range(200)]
        agent.set_global_plan(gps, world)
        # the evaluator appends "+<save_name>" to --agent-config
        agent.setup(f"{weights / release / f'agent_{preset}.yaml'}+RouteScenario_1_rep0")
        autonomous_agent.GameTime.reset()
        for tick in range(14):  # the first model call is on tick 11
            gnss = location_to_gps(42.0, 2.0, 0.1 * tick, 0.0)
            data = {camera: (tick, frame) for camera, frame in frames.items()}
            data[IMU_ID] = (tick, np.array([0.1, 0.0, 9.81, 0.0, 0.0, 0.0, math.pi / 2]))
            data[SPEED_ID] = (tick, {"speed": 1.0})
            data[GNSS_ID] = (tick, np.array([gnss["lat"], gnss["lon"], 0.0]))
            agent.sensor_interface.put(data)
            control = agent()
            autonomous_agent.GameTime.tick()
        assert agent.stack.inferences >= 1
        assert all(math.isfinite(v) for v in (control.steer, control.throttle, control.brake))
        agent.destroy()


def test_interrupted_transfer_resumes_with_a_range_request(hub, tmp_path, capsys) -> None:
    name = "DriveMoE_Base_bf16.pt"
    data = hub.repos["rethinklab/DriveMoE"].files[name]
    weights = tmp_path / "weights"
    hub.cut_after[name] = len(data) // 2  # connection lost half-way, and the network stays down
    assert download(weights) == 2
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and "Traceback" not in err
    part = weights / "official" / (name + ".part")
    kept = part.stat().st_size
    assert 0 < kept <= len(data) // 2
    assert not (weights / "official" / name).exists() and not (weights / "drivemoe-base-bf16").exists()

    hub.outage = False
    assert download(weights) == 0
    assert "resuming" in capsys.readouterr().out
    assert hub.gets(name)[-1][2] == f"bytes={kept}-"
    assert (weights / "official" / name).read_bytes() == data
    assert hub.bytes_sent[name] == len(data) // 2 + len(data) - kept  # the kept bytes were not sent again
    assert not part.exists()


def test_tokenizer_token_errors_come_before_the_checkpoint_transfer(hub, tmp_path, capsys) -> None:
    weights = tmp_path / "weights"
    assert download(weights, token=None) == 2
    err = capsys.readouterr().err
    assert TOKENIZER_REPO in err and "licence" in err and "hf auth login" in err and "Traceback" not in err
    assert download(weights, token="hf_not_accepted") == 2
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "accept the licence" in err and f"{hub.endpoint}/{TOKENIZER_REPO}" in err
    hub.invalid_tokens.add("hf_expired")
    assert download(weights, token="hf_expired") == 2
    err = capsys.readouterr().err
    assert "rejected the Hugging Face token (HTTP 401" in err and "hf auth login" in err
    assert not any(path.endswith(".pt") for _, path, _, _ in hub.requests)
    # a tokenizer folder on disk needs no token at all
    tokenizer = build_fixture_vocab_tokenizer(tmp_path / "tok")
    assert download(weights, "--tokenizer", str(tokenizer), token=None) == 0


def test_wrong_file_is_deleted_and_named(hub, tmp_path, capsys) -> None:
    name = "DrivePi0_Base_fp32.pt"
    hub.repos["rethinklab/DriveMoE"].wrong_content[name] = b"\0" * len(hub.repos["rethinklab/DriveMoE"].files[name])
    weights = tmp_path / "weights"
    assert download(weights, release="drivepi0-base-fp32") == 2
    err = capsys.readouterr().err
    assert "wrong file" in err and name in err and "sha256" in err
    assert not list((weights / "official").iterdir())


def test_not_a_checkpoint_is_named_and_nothing_converted(hub, tmp_path, capsys) -> None:
    hub.repos["rethinklab/DriveMoE"].files["DrivePi0_Base_bf16.pt"] = b"<html>not a checkpoint</html>"
    weights = tmp_path / "weights"
    assert download(weights, release="drivepi0-base-bf16") == 2
    err = capsys.readouterr().err
    assert "cannot read official checkpoint" in err and "DrivePi0_Base_bf16.pt" in err
    assert not (weights / "drivepi0-base-bf16").exists() and not list(weights.glob(".*partial"))


def test_no_disk_space_is_refused_before_the_transfer(hub, tmp_path, capsys, monkeypatch) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("model.download.shutil.disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    weights = tmp_path / "weights"
    assert download(weights, "--tokenizer", str(build_fixture_vocab_tokenizer(tmp_path / "tok")), token=None) == 2
    err = capsys.readouterr().err
    assert "not enough disk space in" in err and "DriveMoE_Base_bf16.pt" in err and "free" in err
    assert not list((weights / "official").iterdir())


def test_offline_uses_what_is_on_disk(hub, tmp_path, capsys, monkeypatch) -> None:
    weights = tmp_path / "weights"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download(weights) == 2
    assert "offline (HF_HUB_OFFLINE=1)" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert download(weights) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    count = len(hub.requests)
    assert download(weights) == 0
    assert len(hub.requests) == count


def test_unreachable_hub_and_missing_file(hub, tmp_path, capsys, monkeypatch) -> None:
    weights = tmp_path / "weights"
    tokenizer = str(build_fixture_vocab_tokenizer(tmp_path / "tok"))
    del hub.repos["rethinklab/DriveMoE"].files["DriveMoE_Base_bf16.pt"]
    assert download(weights, "--tokenizer", tokenizer) == 2
    assert "has no file DriveMoE_Base_bf16.pt or DriveMoE_base_bf16.pt" in capsys.readouterr().err
    # the other spelling some mirrors use is found
    hub.repos["rethinklab/DriveMoE"].files["DriveMoE_base_bf16.pt"] = hub.repos["rethinklab/DriveMoE"].files["DrivePi0_Base_bf16.pt"]
    assert download(weights, "--tokenizer", tokenizer, "--preset", "tiny-drivepi0") == 0
    assert (weights / "official" / "DriveMoE_base_bf16.pt").is_file()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert download(tmp_path / "other", "--tokenizer", tokenizer) == 2
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9" in err and "HF_HUB_OFFLINE=1" in err


def test_shipped_agent_configs_point_at_what_download_writes(hub, tmp_path) -> None:
    """Each configs/agent/*.yaml, laid beside a weights/ folder made by `drivemoe download`, loads."""
    import shutil

    from agent.runtime.config import load_agent_config
    from conftest import REPO_ROOT
    from model.checkpoints import load_pretrained

    checkout = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "configs" / "agent", checkout / "configs" / "agent")
    shipped = sorted((checkout / "configs" / "agent").glob("*.yaml"))
    assert {p.name for p in shipped} >= {"default.yaml", "official.yaml", "drivepi0_default.yaml"}
    for release in RELEASES:
        assert download(checkout / "weights", release=release) == 0
    for path in shipped:
        config = load_agent_config(path)
        folder = Path(config.checkpoint)
        assert folder.parent == (checkout / "weights").resolve(), f"{path.name}: checkpoint {folder} is not a weights/ folder"
        assert folder.name in RELEASES, f"{path.name}: {folder.name} is not a folder `drivemoe download` writes"
        load_pretrained(folder)


def test_out_folder_that_cannot_be_created(hub, tmp_path, capsys) -> None:
    (tmp_path / "a_file").write_text("x")
    assert download(tmp_path / "a_file" / "weights") == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "a_file" in err and "Traceback" not in err


def test_a_damaged_local_file_is_fetched_again(hub, tmp_path, capsys) -> None:
    weights = tmp_path / "weights"
    name = "DrivePi0_Base_bf16.pt"
    assert download(weights, release="drivepi0-base-bf16") == 0
    official = weights / "official" / name
    (weights / "official" / (name + ".sha256")).unlink()
    data = bytearray(official.read_bytes())
    data[100] ^= 0xFF
    official.write_bytes(bytes(data))
    assert download(weights, release="drivepi0-base-bf16") == 0
    assert "differs from the hub's" in capsys.readouterr().out
    assert official.read_bytes() == hub.repos["rethinklab/DriveMoE"].files[name]


def test_no_convert_needs_no_token_and_only_downloads(hub, tmp_path) -> None:
    weights = tmp_path / "weights"
    assert download(weights, "--no-convert", release="drivepi0-full-fp32", token=None) == 0
    assert sorted(p.name for p in (weights / "official").iterdir()) == ["DrivePi0_Full_fp32.pt", "DrivePi0_Full_fp32.pt.sha256"]
    assert not (weights / "drivepi0-full-fp32").exists() and not (weights / "paligemma-tokenizer").exists()

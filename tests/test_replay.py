"""`drivemoe replay`: the agent stack over a clip writes the trace and scores; bad frames are named or skipped."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.demo.command import build_demo_policy
from agent.demo.scene import DemoSceneConfig, write_demo_clip
from agent.debugger.replay import ClipTick, build_route, load_camera_labels, resample_route
from agent.debugger.replay_scoring import confusion_matrix, displacement_errors, future_waypoints
from agent.runtime.localization import GeoReference, Localizer
from agent.runtime.sensor_frames import gnss_mount_offset
from model.cameras import ROUTER_CANDIDATES, router_class_of_label
from model.cli import main as drivemoe_main
from model.ego_state import world_to_ego
from model.dataset.b2d_clip import B2DClip, write_frame

SAMPLE_FILES = {"CAM_FRONT": "f", "CAM_FRONT_LEFT": "fl", "CAM_FRONT_RIGHT": "fr",
                "CAM_BACK": "b", "CAM_BACK_LEFT": "bl", "CAM_BACK_RIGHT": "br"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    _, folder, trained = build_demo_policy(tmp_path_factory.mktemp("model"), seed=0, weights=None)
    assert not trained
    return folder


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory):
    return write_demo_clip(tmp_path_factory.mktemp("clip"), DemoSceneConfig(num_frames=14), progress=False)


def _trace(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "trace.jsonl").read_text().splitlines()]


def test_scoring_on_known_trajectories():
    # a car heading south (compass pi) at 2 m/s: the future lies straight ahead in its ego frame
    annotations = {i: {"x": 5.0, "y": 0.2 * i, "theta": math.pi} for i in range(12)}
    truth = future_waypoints(annotations, 1, 10)
    np.testing.assert_allclose(truth, np.stack([0.2 * np.arange(10), np.zeros(10)], axis=1), atol=1e-12)
    assert future_waypoints(annotations, 3, 10) is None  # frames 3..12: 12 is missing
    predicted = truth + np.array([0.0, 1.0])  # 1 m to the right everywhere
    assert displacement_errors(predicted, truth) == pytest.approx((1.0, 1.0))
    assert confusion_matrix([0, 0, 2], [0, 1, 2], 3).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert resample_route(np.array([[0.0, 0.0], [25.0, 0.0]]), 10.0)[:, 0].tolist() == [0.0, 10.0, 20.0, 25.0]
    frames = [{"x": float(i), "y": 0.0, "x_command_far": 50.0 if i < 3 else 100.0, "y_command_far": 0.0} for i in range(6)]
    assert build_route(frames, "commands", 50.0).tolist() == [[0.0, 0.0], [50.0, 0.0], [100.0, 0.0]]
    assert build_route(frames, "trajectory", 50.0).tolist() == [[0.0, 0.0], [50.0, 0.0], [100.0, 0.0]]
    assert build_route([{"x": 1.0, "y": 2.0}], "commands", 50.0).tolist() == [[1.0, 2.0], [1.0, 2.0]]


def test_clip_tick_gives_the_stack_the_annotated_pose(demo_clip):
    clip = B2DClip(demo_clip.clip_dir)
    annotation = clip.annotation(5)
    tick = ClipTick(clip, 5, annotation, GeoReference())
    localizer = Localizer(GeoReference(), gnss_mount_offset())  # the GNSS reads the antenna; the pose is the ego box
    gnss = tick["GPS"][1][:2]
    pose = localizer.update(gnss, float(tick["IMU"][1][6]))
    assert [pose.x, pose.y] == pytest.approx(annotation["bounding_boxes"][0]["location"][:2], abs=1e-3)
    assert "CAM_BACK" in tick and "LIDAR" not in tick
    bgr = tick["CAM_FRONT"][1]
    np.testing.assert_array_equal(bgr[..., ::-1], clip.read_image("CAM_FRONT", 5))


@pytest.mark.slow
def test_replay_on_the_builtin_clip(demo_clip, model_dir, tmp_path, capsys):
    out = tmp_path / "replay"
    code = drivemoe_main(["replay", "--clip", str(demo_clip.clip_dir), "--model", str(model_dir), "--out", str(out),
                          "--camera-labels", str(demo_clip.camera_labels_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "replayed 14 frames" in printed and "ADE" in printed
    lines = _trace(out)
    clip = B2DClip(demo_clip.clip_dir)
    assert [line["frame"] for line in lines] == list(clip.frame_indices)
    for line in lines:
        annotation = clip.annotation(line["frame"])
        assert line["position"] == pytest.approx([annotation["x"], annotation["y"]], abs=1e-3)
        assert line["compass"] == pytest.approx(annotation["theta"])
        assert line["sim_time"] == pytest.approx(line["frame"] / 10)
        assert len(line["camera_router"]["probs"]) == 5 and len(line["waypoints"]) == 10
        # the stack's planner on the command route hands the model the clip's own far command
        far = world_to_ego(np.array([[annotation["x_command_far"], annotation["y_command_far"]]]),
                           np.array([annotation["x"], annotation["y"]]), annotation["theta"])[0]
        assert line["target_point"] == pytest.approx(far.tolist(), abs=1e-3)
    header = json.loads((out / "trace_header.json").read_text())
    assert header["save_name"] == clip.name and header["scenario_type"] == "HazardAtSideLane"
    scores = json.loads((out / "scores.json").read_text())
    # camera accuracy recomputed from the trace and the label file
    labels = load_camera_labels(demo_clip.camera_labels_path)
    hits = [router_class_of_label(labels[l["frame"]]) == ROUTER_CANDIDATES.index(l["camera_router"]["selected"][0]) for l in lines]
    assert scores["camera_router"]["accuracy"] == pytest.approx(np.mean(hits))
    assert scores["camera_router"]["scored_frames"] == 14
    # ADE recomputed from the trace's waypoints and the clip's future positions (frames 0..4 have 10 future frames)
    annotations = {i: clip.annotation(i) for i in clip.frame_indices}
    ade = [displacement_errors(np.array(l["waypoints"]), future_waypoints(annotations, l["frame"], 10))[0]
           for l in lines if future_waypoints(annotations, l["frame"], 10) is not None]
    assert scores["waypoints"]["scored_frames"] == len(ade) == 5
    assert scores["waypoints"]["ade_m"] == pytest.approx(np.mean(ade))
    # skill: HazardAtSideLane -> OVERTAKING; predicted = argmax of the step-averaged router logits
    predicted = [int(np.argmax(np.mean([s["logits"] for s in l["action_router"]["steps"]], axis=0))) for l in lines]
    assert scores["skill_router"]["label"] == "OVERTAKING"
    assert scores["skill_router"]["accuracy"] == pytest.approx(np.mean([p == 2 for p in predicted]))
    assert (out / "camera_labels.json").is_file()


def _sample_clip(root: Path, reference: Path, frames: int) -> Path:
    """A clip made of the real sample frame repeated, with a car driving east at 5 m/s."""
    images = {camera: cv2.cvtColor(cv2.imread(str(reference / "sample_frame" / f"example_{suffix}.jpg")), cv2.COLOR_BGR2RGB)
              for camera, suffix in SAMPLE_FILES.items()}
    clip = root / "Accident_Town03_Route101_Weather23"
    for i in range(frames):
        annotation = {"x": 100.0 + 0.5 * i, "y": -40.0, "theta": math.pi / 2, "speed": 5.0,
                      "acceleration": [0.0, 0.0, 9.81], "angular_velocity": [0.0, 0.0, 0.0],
                      "x_command_far": 140.0, "y_command_far": -40.0, "command_far": 4}
        write_frame(clip, i, annotation, images)
    return clip


@pytest.mark.slow
def test_replay_on_the_real_sample_frame(drivemoe_reference, model_dir, tmp_path):
    clip = _sample_clip(tmp_path, drivemoe_reference, frames=11)
    labels = drivemoe_reference / "camera_labels" / "Accident_Town03_Route101_Weather23.json"
    out = tmp_path / "replay"
    assert drivemoe_main(["replay", "--clip", str(clip), "--model", str(model_dir), "--out", str(out),
                          "--camera-labels", str(labels)]) == 0
    lines = _trace(out)
    assert [l["frame"] for l in lines] == list(range(11))
    # straight east: the target point lies ahead on the x axis of the ego frame
    assert all(l["target_point"][0] > 0 and abs(l["target_point"][1]) < 1e-3 for l in lines)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["waypoints"]["scored_frames"] == 2
    assert scores["camera_router"]["scored_frames"] == 11  # the authors' label file covers frames 0..195


def _corrupt_image(clip: Path, frame: int) -> Path:
    path = B2DClip(clip).image_path("CAM_BACK_LEFT", frame)
    path.write_bytes(path.read_bytes()[:200])
    return path


@pytest.mark.slow
def test_corrupt_or_missing_frames_are_named_or_skipped(demo_clip, model_dir, tmp_path, capsys):
    import shutil

    clip = tmp_path / demo_clip.clip_dir.name
    shutil.copytree(demo_clip.clip_dir, clip)
    _corrupt_image(clip, 3)
    (clip / "anno" / "00007.json.gz").unlink()
    args = ["replay", "--clip", str(clip), "--model", str(model_dir), "--out", str(tmp_path / "r")]
    assert drivemoe_main(args) == 2
    err = capsys.readouterr().err
    assert "frame 7" in err and "annotation file missing" in err and "--skip-bad-frames" in err
    assert "Traceback" not in err
    (clip / "anno" / "00007.json.gz").write_bytes(gzip.compress(b'{"x": 1.0, "y": '))  # truncated JSON
    assert drivemoe_main(args) == 2
    err = capsys.readouterr().err
    assert "frame 3" in err and "truncated JPEG" in err
    assert drivemoe_main(args + ["--skip-bad-frames"]) == 0
    captured = capsys.readouterr()
    assert "skipped frames: [3, 7]" in captured.out
    assert "frame 3" in captured.err and "frame 7" in captured.err
    assert [l["frame"] for l in _trace(tmp_path / "r")] == [0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13]


def test_bad_labels_and_missing_clip_are_clear_errors(demo_clip, model_dir, tmp_path, capsys):
    bad = tmp_path / "labels.json"
    bad.write_text(json.dumps({"0": "CAM_ROOF"}))
    assert drivemoe_main(["replay", "--clip", str(demo_clip.clip_dir), "--model", str(model_dir), "--out",
                          str(tmp_path / "r"), "--camera-labels", str(bad)]) == 2
    assert "frame 0" in capsys.readouterr().err
    assert drivemoe_main(["replay", "--clip", str(tmp_path / "nope"), "--model", str(model_dir), "--out", str(tmp_path / "r")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_replay_decodes_dataset_jpegs_once(demo_clip, model_dir, tmp_path):
    """Dataset frames are already quality-20 JPEGs: the replay must feed the model exactly what the
    training pipeline makes of them (decode + resize), not a second JPEG round trip."""
    from agent.debugger.replay import ReplayConfig, run_replay
    from model.cameras import FRONT
    from model.image_preprocessing import prepare_camera_image
    from model.policy import DrivePolicy

    import shutil

    clip_dir = tmp_path / "clip"
    shutil.copytree(demo_clip.clip_dir, clip_dir)
    # Store the front frames at quality 95: a second quality-20 round trip would then change them
    # visibly (re-encoding a quality-20 JPEG at quality 20 is nearly a no-op and would hide it).
    for path in (clip_dir / "camera" / "rgb_front").glob("*.jpg"):
        cv2.imwrite(str(path), cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    policy = DrivePolicy.from_pretrained(model_dir)
    seen: list[np.ndarray] = []

    class RecordingPolicy:
        def __init__(self, inner):
            self.inner = inner
            self.config, self.device, self.image_size = inner.config, inner.device, inner.image_size

        def predict(self, observation):
            prediction = self.inner.predict(observation)
            seen.append(prediction.prepared_images[FRONT].chw.copy())
            return prediction

    run_replay(clip_dir, RecordingPolicy(policy), tmp_path / "out", config=ReplayConfig(progress=False))
    clip = B2DClip(clip_dir)
    frames = [record["frame"] for record in _trace(tmp_path / "out")]
    assert len(frames) == len(seen) > 0
    for frame, chw in zip(frames, seen):
        expected = prepare_camera_image(clip.read_image(FRONT, frame), policy.image_size, jpeg_quality=None)
        np.testing.assert_array_equal(chw, expected.chw)


def test_bad_annotation_speed_is_held_or_braked_never_zero(demo_clip, model_dir, tmp_path, capsys):
    import shutil

    clip = tmp_path / demo_clip.clip_dir.name
    shutil.copytree(demo_clip.clip_dir, clip)
    b2d = B2DClip(clip)
    original = {f: b2d.annotation(f) for f in range(14)}
    assert all(original[f]["speed"] > 0.5 for f in range(1, 6))

    def rewrite(frame: int, change) -> None:
        annotation = dict(original[frame])
        change(annotation)
        path = b2d.annotation_path(frame)
        path.write_bytes(gzip.compress(json.dumps(annotation).encode()))  # json writes NaN as a bare NaN, as a careless writer would

    rewrite(0, lambda a: a.pop("speed"))  # nothing valid yet: the agent brakes
    rewrite(3, lambda a: a.update(speed=float("nan")))
    rewrite(4, lambda a: a.update(speed=None))
    out = tmp_path / "r"
    assert drivemoe_main(["replay", "--clip", str(clip), "--model", str(model_dir), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    name = clip.name
    assert f"clip {name} frame(s) [0]: field 'speed' unusable (missing" in err
    assert f"clip {name} frame(s) [3]: field 'speed' unusable (not_finite" in err
    assert f"clip {name} frame(s) [4]: field 'speed' unusable (none" in err
    lines = {l["frame"]: l for l in _trace(out)}
    assert 0 not in lines and 1 in lines  # frame 0 is skipped: braked, no inference, as the live agent does
    faults = [json.loads(l) for l in (out / "faults.jsonl").read_text().splitlines()]
    braked = [f for line in faults for f in line["faults"] if f["sensor"] == "SPEED" and f["action"] == "brake"]
    assert braked and braked[0]["kind"] == "missing" and faults[0]["control"]["brake"] == 1.0
    for frame in (3, 4):  # the last valid speed (frame 2's), not 0
        assert lines[frame]["speed"] == pytest.approx(original[2]["speed"])
        assert any(f["sensor"] == "SPEED" and f["action"] == "held" for f in lines[frame]["faults"])
    assert lines[5]["speed"] == pytest.approx(original[5]["speed"]) and "faults" not in lines[5]

"""The fast exact camera path (FramePreparer): Pillow decode + row strips on a thread pool must give
the same bytes as the exact path (OpenCV JPEG round trip + PIL resize of the whole frame)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from agent.runtime.config import AgentConfigError, agent_config_from_dict
from agent.runtime.sensor_frames import LazyCameraImages, prepare_sensor_frame
from model.cameras import FRONT, ROUTER_CANDIDATES
from model.errors import ObservationError
from model.image_preprocessing import _PRECISION_BITS, FramePreparer, _pil_bilinear_coefficients, row_strip_plan


def _emulated_pil_resize(rgb: np.ndarray, width: int, height: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """Pillow's two-pass 8-bit resample written out with the replicated integer coefficients."""
    def matrix(in_size: int, in0: float, in1: float, out_size: int) -> np.ndarray:
        firsts, weights = _pil_bilinear_coefficients(in_size, in0, in1, out_size)
        m = np.zeros((out_size, in_size), dtype=np.int64)
        for row, (first, w) in enumerate(zip(firsts, weights)):
            m[row, first:first + len(w)] = w
        return m

    half = 1 << (_PRECISION_BITS - 1)
    horizontal = matrix(rgb.shape[1], box[0], box[2], width)
    vertical = matrix(rgb.shape[0], box[1], box[3], height)
    tmp = np.clip((np.einsum("hwc,ow->hoc", rgb.astype(np.int64), horizontal) + half) >> _PRECISION_BITS, 0, 255)
    return np.clip((np.einsum("hoc,ph->poc", tmp, vertical) + half) >> _PRECISION_BITS, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape, width, height, box", [
    ((90, 160), 32, 32, None), ((90, 160), 32, 16, (0.0, 45.0, 160.0, 90.0)), ((100, 77), 30, 41, None),
    ((50, 60), 80, 70, None), ((90, 160), 32, 13, (0.0, 37.3, 160.0, 80.1)),
])
def test_replicated_coefficients_reproduce_pillow_exactly(shape, width, height, box):
    rgb = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    box = box or (0.0, 0.0, float(shape[1]), float(shape[0]))
    pil = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR, box=box))
    assert np.array_equal(pil, _emulated_pil_resize(rgb, width, height, box))


def _frames(drivemoe_reference) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sample = cv2.cvtColor(cv2.imread(str(drivemoe_reference / "sample_frame" / "example_b.jpg")), cv2.COLOR_BGR2BGRA)
    sample[::7, ::5, :3] = 255 - sample[::7, ::5, :3]  # not a JPEG any more: the round trip matters
    return {
        "sample": sample,
        "noise": rng.integers(0, 256, (900, 1600, 4), dtype=np.uint8),
        "smooth bgr": cv2.GaussianBlur(rng.integers(0, 256, (450, 800, 3), dtype=np.uint8), (9, 9), 0),
        "odd": rng.integers(0, 256, (333, 517, 4), dtype=np.uint8),
    }


def test_strips_are_bit_identical_to_the_exact_path(drivemoe_reference):
    with FramePreparer(1) as one, FramePreparer(2) as two, FramePreparer(3) as three:
        for name, frame in _frames(drivemoe_reference).items():
            for size, quality in ((224, 20), (160, 75), (224, None)):
                exact = prepare_sensor_frame(frame, size, quality, FRONT).chw
                for preparer in (one, two, three):
                    fast = preparer.prepare(frame, size, quality, FRONT)
                    assert np.array_equal(fast.chw, exact), (name, size, quality, preparer.threads)
                    assert fast.chw.shape == (3, size, size) and not fast.chw.flags.writeable


def test_the_sensor_geometry_splits_and_an_unprovable_one_stays_whole():
    strips = row_strip_plan(900, 1600, 224, 2, True)
    assert len(strips) == 2 and strips[0].out1 == strips[1].out0 == 112
    assert strips[0].row1 % 16 == 0 and strips[1].row0 % 16 == 0 and strips[1].row1 == 900
    assert len(row_strip_plan(333, 517, 224, 2, True)) == 1  # no output row maps to a whole source row


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="threads"):
        FramePreparer(0)
    with FramePreparer(2) as preparer:
        with pytest.raises(ObservationError, match="CAM_BACK"):
            preparer.prepare(np.zeros((9, 16, 4), dtype=np.float32), 8, 20, "CAM_BACK")
        with pytest.raises(ObservationError, match="jpeg_quality"):
            preparer.prepare(np.zeros((9, 16, 4), dtype=np.uint8), 8, 0, "CAM_BACK")
    with pytest.raises(AgentConfigError, match="prepare_threads"):
        agent_config_from_dict({"checkpoint": "x", "prepare_threads": 0})


def test_lazy_images_with_a_preparer_serve_the_same_images(drivemoe_reference):
    frame = _frames(drivemoe_reference)["sample"]
    data = {FRONT: (0, frame), ROUTER_CANDIDATES[2]: (0, frame[:, ::-1].copy())}
    plain = LazyCameraImages(data, 224, 20, None)
    with FramePreparer(2) as preparer:
        pooled = LazyCameraImages(data, 224, 20, None, preparer=preparer)
        for camera in (FRONT, ROUTER_CANDIDATES[2]):
            assert np.array_equal(pooled[camera].chw, plain[camera].chw)
        assert pooled.accessed == [FRONT, ROUTER_CANDIDATES[2]]
        with pytest.raises(ValueError, match="CAM_FRONT"):
            LazyCameraImages({FRONT: (0, np.zeros((4, 4), np.uint8))}, 8, 20, None, preparer=preparer)[FRONT]


def test_device_preprocessing_is_within_one_grey_level_of_the_exact_path(drivemoe_reference):
    from model.device_preprocessing import DevicePreparer

    frame = _frames(drivemoe_reference)["sample"]
    preparer = DevicePreparer("cuda" if torch.cuda.is_available() else "cpu")
    for quality in (20, None):
        exact = prepare_sensor_frame(frame, 224, quality, FRONT).chw.astype(int)
        device = preparer.prepare(frame, 224, quality, FRONT)
        assert device.chw.shape == (3, 224, 224) and device.chw.dtype == np.uint8
        difference = np.abs(device.chw.astype(int) - exact)
        if preparer.jpeg_backend == "cpu" or quality is None:  # same codec: only the float resize differs
            assert difference.max() <= 1 and difference.mean() < 0.2
        else:  # nvJPEG: another codec implementation
            assert difference.mean() < 2.0
    with pytest.raises(ObservationError, match="CAM_BACK"):
        preparer.prepare(np.zeros((9, 16), dtype=np.uint8), 8, 20, "CAM_BACK")
    with pytest.raises(AgentConfigError, match="gpu_preprocessing"):
        agent_config_from_dict({"checkpoint": "x", "device": "cpu", "gpu_preprocessing": True})
    with pytest.raises(AgentConfigError, match="jpeg_decode_scale"):
        agent_config_from_dict({"checkpoint": "x", "device": "cuda", "gpu_preprocessing": True, "jpeg_decode_scale": 2})


def test_the_codec_assumptions_hold_here_and_a_failing_check_stays_exact(monkeypatch, drivemoe_reference):
    import model.image_preprocessing as ip

    assert ip.codecs_agree() == (True, True)  # the wheels' libjpeg-turbo builds
    frame = _frames(drivemoe_reference)["noise"]
    exact = prepare_sensor_frame(frame, 224, 20, FRONT).chw
    monkeypatch.setattr(ip, "codecs_agree", lambda: (False, False))  # another libjpeg: OpenCV decode, whole frame
    with FramePreparer(2) as preparer:
        assert np.array_equal(preparer.prepare(frame, 224, 20, FRONT).chw, exact)


def test_agent_stack_images_do_not_depend_on_prepare_threads():
    """The whole agent path (BGRA sensor frames -> lazy images -> policy) gives the same bytes for
    prepare_threads 1 and 2 and the same bytes as the previous exact function."""
    import math
    from types import SimpleNamespace

    from agent.runtime.localization import GeoReference, world_to_gps
    from agent.runtime.sensor_frames import GNSS_ID, IMU_ID, SPEED_ID
    from agent.runtime.stack import AgentStack
    from model.cameras import FRONT_PREVIOUS

    class Reader:
        def __init__(self) -> None:
            self.seen = []

        def predict(self, observation):
            images = observation["images"]
            self.seen.append([images[c].chw.copy() for c in (FRONT, FRONT_PREVIOUS, ROUTER_CANDIDATES[1])])
            return SimpleNamespace(waypoints=np.stack([np.arange(10) * 0.5, np.zeros(10)], axis=1), camera_probs=None,
                                   action_router_logits=None, timings_ms={})

    rng = np.random.default_rng(4)
    frames = [{c: rng.integers(0, 256, (450, 800, 4), dtype=np.uint8) for c in (FRONT, ROUTER_CANDIDATES[1])} for _ in range(3)]
    ref = GeoReference()
    seen = {}
    for threads in (1, 2):
        policy = Reader()
        config = agent_config_from_dict({"checkpoint": "x", "prepare_threads": threads})
        stack = AgentStack(config, policy, np.stack([np.arange(300.0), np.zeros(300)], axis=1), ref, image_size=224,
                           observation_factory=dict)
        for tick in range(6):
            gnss = world_to_gps(np.array([0.25 * tick, 0.0]), ref)
            data = {c: (tick, f) for c, f in frames[tick // 2].items()}
            data.update({GNSS_ID: (tick, np.array([gnss[0], gnss[1], 0.0])), SPEED_ID: (tick, {"speed": 1.0}),
                         IMU_ID: (tick, np.array([0, 0, 9.8, 0, 0, 0, math.pi / 2]))})
            stack.tick(data, tick * 0.05)
        seen[threads] = policy.seen
    assert len(seen[1]) == 3
    for one, two, tick_frames in zip(seen[1], seen[2], frames):
        assert all(np.array_equal(a, b) for a, b in zip(one, two))
        assert np.array_equal(one[0], prepare_sensor_frame(tick_frames[FRONT], 224, 20, FRONT).chw)

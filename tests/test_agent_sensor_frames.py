"""Sensor declarations, robust measurement reading, BGRA->RGB, the lazy camera Mapping, and the
official preset's test-time augmentation."""
from __future__ import annotations

import numpy as np
import pytest

from agent.runtime.sensor_frames import (
    GNSS_ID,
    IMU_ID,
    SPEED_ID,
    LazyCameraImages,
    bgra_to_rgb,
    declared_cameras,
    leaderboard_sensors,
    read_measurements,
)
from model.augmentation import TestTimeAugmentation
from model.cameras import FRONT, FRONT_PREVIOUS, MODEL_IMAGE_ORDER
from model.image_preprocessing import PreparedImage


def bgra(value_b: int, value_g: int, value_r: int, h: int = 90, w: int = 160) -> np.ndarray:
    frame = np.zeros((h, w, 4), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2], frame[..., 3] = value_b, value_g, value_r, 255
    return frame


def test_sensor_list_has_the_rig_and_the_three_other_sensors():
    sensors = leaderboard_sensors()
    types = [s["type"] for s in sensors]
    assert types.count("sensor.camera.rgb") == 6
    gnss = next(s for s in sensors if s["id"] == GNSS_ID)
    assert (gnss["x"], gnss["y"], gnss["z"]) == (-1.4, 0.0, 0.0)
    assert next(s for s in sensors if s["id"] == SPEED_ID)["type"] == "sensor.speedometer"


@pytest.mark.parametrize("camera_set, router, expected", [
    ("bench2drive_rig", True, 6), ("bench2drive_rig", False, 6), ("authors_agent", True, 6), ("authors_agent", False, 2)])
def test_declared_cameras_follow_the_authors_agent_of_each_model(camera_set, router, expected):
    cameras = declared_cameras(camera_set, uses_camera_router=router)
    assert len(cameras) == expected
    sensors = leaderboard_sensors(cameras)
    declared = [s["id"] for s in sensors if s["type"] == "sensor.camera.rgb"]
    assert declared == list(cameras)
    if expected == 2:  # Drive-pi0 in the authors' agent: front and back, their poses (drivepi0_carla_agent.py:137-150)
        front, back = (s for s in sensors if s["type"] == "sensor.camera.rgb")
        assert (front["id"], front["x"], front["z"], front["yaw"], front["fov"]) == (FRONT, 0.80, 1.60, 0.0, 70.0)
        assert (back["id"], back["x"], back["z"], back["yaw"], back["fov"]) == ("CAM_BACK", -2.0, 1.60, 180.0, 110.0)
    assert [s["id"] for s in sensors if s["type"] != "sensor.camera.rgb"] == [GNSS_ID, IMU_ID, SPEED_ID]


def test_bgra_to_rgb_swaps_channels_and_drops_alpha():
    rgb = bgra_to_rgb(bgra(10, 20, 30), "CAM_FRONT")
    assert rgb.shape == (90, 160, 3) and rgb.flags["C_CONTIGUOUS"]
    assert rgb[0, 0].tolist() == [30, 20, 10]
    with pytest.raises(ValueError, match="CAM_BACK"):
        bgra_to_rgb(np.zeros((4, 4, 4), dtype=np.float32), "CAM_BACK")


def test_measurements_survive_missing_and_nan_readings():
    m = read_measurements({IMU_ID: (0, np.array([1.0, np.nan, 9.8, 0.0, 0.0, 0.2, np.nan])), SPEED_ID: (0, {"speed": None})})
    assert m.gnss is None and m.compass is None
    assert m.speed is None and m.speed_fault == ("none", "speed is None")  # never read as 0 m/s
    assert m.acceleration == (1.0, 0.0, 9.8) and m.angular_velocity == (0.0, 0.0, 0.2)
    good = read_measurements({GNSS_ID: (0, np.array([42.0, 2.0, 1.0])), IMU_ID: (0, np.zeros(7)), SPEED_ID: (0, {"speed": 3.5})})
    assert good.gnss.tolist() == [42.0, 2.0] and good.compass == 0.0 and good.speed == 3.5
    assert read_measurements({GNSS_ID: (0, None), IMU_ID: "garbage"}).gnss is None


class Untouchable:
    """A camera frame that fails the test if anything converts it."""

    def __getitem__(self, item):
        raise AssertionError("an unselected camera was converted")

    def __array__(self, *args, **kwargs):
        raise AssertionError("an unselected camera was converted")


def test_lazy_mapping_prepares_only_what_is_read_in_order():
    data = {
        "CAM_FRONT": (0, bgra(0, 0, 200)),
        "CAM_FRONT_LEFT": (0, bgra(0, 200, 0)),
        "CAM_FRONT_RIGHT": (0, Untouchable()),
        "CAM_BACK": (0, Untouchable()),
    }
    images = LazyCameraImages(data, image_size=32, jpeg_quality=20, previous_front=None)
    present = [name for name in MODEL_IMAGE_ORDER if name in data or name == FRONT_PREVIOUS]
    assert list(images) == present and len(images) == len(present) and "CAM_BACK" in images
    assert "CAM_BACK_LEFT" not in images  # a camera without data is not listed as available
    front = images[FRONT]
    assert isinstance(front, PreparedImage) and front.chw.shape == (3, 32, 32)
    assert abs(int(front.chw[0].mean()) - 200) < 10 and front.chw[1].mean() < 10  # red stays red
    previous = images[FRONT_PREVIOUS]  # no earlier inference: the current front stands in
    assert np.array_equal(previous.chw, front.chw)
    images["CAM_FRONT_LEFT"]
    assert images.accessed == [FRONT, "CAM_FRONT_LEFT"]
    with pytest.raises(KeyError, match="CAM_BACK_LEFT"):
        images["CAM_BACK_LEFT"]  # not in this tick's data


def test_lazy_mapping_serves_the_given_previous_front_without_converting_anything():
    stored = PreparedImage(np.full((3, 32, 32), 7, dtype=np.uint8), FRONT)
    images = LazyCameraImages({"CAM_FRONT": (0, Untouchable())}, 32, 20, previous_front=stored)
    assert images[FRONT_PREVIOUS] is stored and images.accessed == []


def test_augmentation_changes_images_within_bounds_and_is_reproducible_when_seeded():
    rng = np.random.default_rng(1)
    image = PreparedImage(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8), FRONT)
    a = TestTimeAugmentation(seed=3)(image)
    b = TestTimeAugmentation(seed=3)(image)
    c = TestTimeAugmentation(seed=4)(image)
    assert a.chw.shape == image.chw.shape and a.chw.dtype == np.uint8
    assert np.array_equal(a.chw, b.chw) and not np.array_equal(a.chw, c.chw)
    assert not np.array_equal(a.chw, image.chw)
    flat = PreparedImage(np.full((3, 32, 32), 128, dtype=np.uint8), FRONT)
    # a grey image: crop and hue/saturation/contrast do nothing, the additive brightness moves it by < 0.1
    out = TestTimeAugmentation(seed=0)(flat).chw.astype(int)
    assert np.all(np.abs(out - 128) <= 26) and out.std() == 0.0


def test_lazy_mapping_applies_augmentation_to_served_images_only():
    calls = []

    def augment(image: PreparedImage) -> PreparedImage:
        calls.append(image.camera)
        return PreparedImage(255 - image.chw, image.camera)

    images = LazyCameraImages({"CAM_FRONT": (0, bgra(0, 0, 200))}, 32, None, None, augment=augment)
    served = images[FRONT]
    assert np.array_equal(served.chw, 255 - images.prepared(FRONT).chw)
    assert calls == [FRONT] and images[FRONT] is served


def test_fast_sensor_path_equals_the_model_preprocessing_definition(drivemoe_reference):
    import cv2

    from agent.runtime.sensor_frames import prepare_sensor_frame
    from model.image_preprocessing import prepare_camera_image

    bgr = cv2.imread(str(drivemoe_reference / "sample_frame" / "example_fl.jpg"))
    frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    frame[::7, ::5, :3] = 255 - frame[::7, ::5, :3]  # not a JPEG any more: the round trip matters
    for quality in (20, None):
        fast = prepare_sensor_frame(frame, 224, quality, "CAM_FRONT_LEFT")
        reference = prepare_camera_image(np.ascontiguousarray(frame[:, :, 2::-1]), 224, quality, "CAM_FRONT_LEFT")
        assert np.array_equal(fast.chw, reference.chw)


def test_half_scale_decode_is_close_to_exact_but_not_identical(drivemoe_reference):
    import cv2

    from agent.runtime.sensor_frames import prepare_sensor_frame

    bgr = cv2.imread(str(drivemoe_reference / "sample_frame" / "example_f.jpg"))
    frame = cv2.cvtColor(cv2.GaussianBlur(bgr, (3, 3), 0), cv2.COLOR_BGR2BGRA)
    exact = prepare_sensor_frame(frame, 224, 20, FRONT).chw.astype(int)
    half = prepare_sensor_frame(frame, 224, 20, FRONT, decode_scale=2).chw.astype(int)
    difference = np.abs(exact - half)
    assert 0 < difference.mean() < 1.0 and np.percentile(difference, 99) <= 4
    with pytest.raises(ValueError, match="decode_scale"):
        prepare_sensor_frame(frame, 224, 20, FRONT, decode_scale=4)


def test_authors_swapped_jpeg_round_trip_encodes_rgb_as_if_bgr():
    import cv2

    from agent.runtime.sensor_frames import prepare_sensor_frame

    rng = np.random.default_rng(5)
    smooth = cv2.resize(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8), (160, 96), interpolation=cv2.INTER_CUBIC)
    bgra = cv2.cvtColor(smooth, cv2.COLOR_BGR2BGRA)
    quirk = prepare_sensor_frame(bgra, 48, 20, FRONT, jpeg_channels="authors_swapped").chw
    correct = prepare_sensor_frame(bgra, 48, 20, FRONT).chw
    rgb = cv2.cvtColor(bgra[:, :, :3], cv2.COLOR_BGR2RGB)  # the authors' tick(): BGRA -> RGB, then imencode
    ok, encoded = cv2.imencode(".jpg", rgb, [int(cv2.IMWRITE_JPEG_QUALITY), 20])
    from model.image_preprocessing import resize_like_torchvision_pil

    expected = resize_like_torchvision_pil(cv2.imdecode(encoded, cv2.IMREAD_COLOR), 48).transpose(2, 0, 1)
    assert ok and np.array_equal(quirk, expected)
    assert not np.array_equal(quirk, correct)  # chroma subsampling falls on the wrong channels

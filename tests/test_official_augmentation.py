"""model/augmentation.py against TensorFlow's output: every image x parameter set of the reference fixture
(shared/drivemoe_reference/augmentation/), each op's intermediate, the contrast means, the full-image
sums and the final uint8; the parameters TF derives from its draws; and the sampled ranges."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from model.augmentation import (
    AugmentationConfig,
    AugmentationParams,
    augment,
    augment_stages,
    channel_means,
    params_from_uniforms,
    sample_params,
    to_float,
    to_uint8,
)

STAGES = ("crop", "brightness", "contrast", "saturation", "hue")


@pytest.fixture(scope="module")
def fixture(drivemoe_reference):
    folder = drivemoe_reference / "augmentation"
    params = json.loads((folder / "params.json").read_text())
    return load_file(str(folder / "inputs.safetensors"))["images"], load_file(str(folder / "expected.safetensors")), params


def tf_params(entry: dict) -> AugmentationParams:
    box = tuple(float.fromhex(h) for h in entry["box_float32_hex"])
    return AugmentationParams(box, entry["brightness_delta"], entry["contrast_factor"],
                              entry["saturation_factor"], entry["hue_delta"])


def test_every_case_equals_tensorflow_at_every_stage(fixture):
    images, expected, params = fixture
    rows, cols = expected["pixel_rows"], expected["pixel_cols"]
    cases = 0
    for i in range(images.shape[0]):
        np.testing.assert_array_equal(to_float(images[i])[rows, cols], expected[f"img{i}/x0_float"])
        for j, entry in enumerate(params["param_sets"]):
            key = f"img{i}_p{j}"
            stages = augment_stages(images[i], tf_params(entry))
            for name in STAGES:
                np.testing.assert_array_equal(stages[name][rows, cols], expected[f"{key}/{name}"], err_msg=f"{key} {name}")
                # one float32 ulp anywhere in the image moves the sum by > 1e-8; summation order by < 1e-10
                np.testing.assert_allclose(stages[name].astype(np.float64).sum(axis=(0, 1)),
                                           expected[f"{key}/{name}_fullsum_f64"], rtol=0, atol=1e-9, err_msg=f"{key} {name} sum")
            np.testing.assert_array_equal(channel_means(stages["brightness"].transpose(2, 0, 1)), expected[f"{key}/contrast_mean_f32"])
            np.testing.assert_array_equal(stages["final_u8"][rows, cols], expected[f"{key}/final_u8"], err_msg=key)
            np.testing.assert_array_equal(stages["final_u8"].astype(np.int64).sum(axis=(0, 1)), expected[f"{key}/final_u8_fullsum"])
            full = expected.get(f"{key}/final_u8_full")
            if full is not None:
                np.testing.assert_array_equal(augment(images[i], tf_params(entry)), full, err_msg=key)
            cases += 1
    assert cases == images.shape[0] * len(params["param_sets"]) == 48


def test_parameters_from_tf_draws_equal_tf_parameters(fixture):
    _, _, params = fixture
    for example in params["seed_examples"]:
        got = params_from_uniforms(example["u_crop"], example["u_brightness"], example["u_contrast"],
                                   example["u_saturation"], example["u_hue"])
        for name in ("brightness_delta", "contrast_factor", "saturation_factor", "hue_delta"):
            assert np.float32(getattr(got, name)) == np.float32(example[name]), (example["seed"], name)
        # numpy's float32 exp is not TF's: the box may differ by ~1e-7 (README), never more
        np.testing.assert_allclose(got.box, example["box_y1x1y2x2"], rtol=0, atol=2e-7)
    for entry in params["param_sets"]:
        got = params_from_uniforms(entry["u_crop"], 0.0, 0.0, 0.0, 0.0)
        np.testing.assert_allclose(got.box, entry["box_y1x1y2x2"], rtol=0, atol=2e-7)


def test_uint8_conversion_is_floor_of_255_5_and_round_trip_identity():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    np.testing.assert_array_equal(to_uint8(to_float(levels)), levels)
    assert to_uint8(np.array([0.5, 1.0, 1.2, -0.1], dtype=np.float32)).tolist() == [127, 255, 255, 0]


def test_sampled_parameters_cover_the_authors_ranges():
    rng = np.random.default_rng(0)
    draws = [sample_params(rng) for _ in range(4000)]
    box = np.array([d.box for d in draws])
    new_h, new_w = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    assert 0.9428 <= new_h.min() and new_h.max() <= 0.9535  # README: [0.94281, 0.95347]
    assert 0.8485 <= new_w.min() and new_w.max() <= 1.0
    assert box[:, 0].max() <= 0.047 and box[:, 1].max() <= 0.03 and box[:, 2:].max() <= 1.0
    assert np.mean(new_w == 1.0) == pytest.approx(1 - 0.76497, abs=0.03)  # one u drives every crop draw
    cfg = AugmentationConfig()
    for name, (low, high) in {"brightness_delta": (-cfg.brightness, cfg.brightness), "contrast_factor": cfg.contrast,
                              "saturation_factor": cfg.saturation, "hue_delta": (-cfg.hue, cfg.hue)}.items():
        values = np.array([getattr(d, name) for d in draws])
        assert low - 1e-7 <= values.min() < low + 0.01 * (high - low) and high - 0.01 * (high - low) < values.max() < high
        assert values.mean() == pytest.approx((low + high) / 2, abs=0.02 * (high - low))
    # the colour draws are independent of the crop's u and of each other
    u_crop = box[:, 0] / np.maximum(1 - new_h, 1e-9)
    colours = np.array([[d.brightness_delta, d.contrast_factor, d.saturation_factor, d.hue_delta] for d in draws])
    correlation = np.corrcoef(np.column_stack([u_crop, colours]).T)
    assert np.abs(correlation[np.triu_indices(5, 1)]).max() < 0.08


def test_same_seed_same_parameters_and_bad_input_rejected():
    a = [sample_params(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    with pytest.raises(ValueError, match="uint8"):
        augment(np.zeros((4, 4, 3), dtype=np.float32), a[0])

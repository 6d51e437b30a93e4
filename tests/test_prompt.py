"""Prompt layout, prompt ids from a (test-built, tiny) tokenizer folder, and text-embedding shrinking."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from model.prompt import (
    build_prompt_tokens,
    embedding_bytes_saved,
    prompt_string,
    prompt_token_ids_from_tokenizer,
    read_tokenizer_prompt,
    shrink_embedding_rows,
)

PAD, EOS, BOS, UNK, IMAGE = 0, 1, 2, 3, 4


def build_tiny_tokenizer(folder: Path, add_image_token: bool = True) -> Path:
    """A Gemma-like tokenizer folder: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <image>=4, BOS added by default."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + (["<image>"] if add_image_token else [])
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^ \n]+|\n"), behavior="isolated")
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=specials, show_progress=False)
    corpus = ["predict trajectory\n", "predict the trajectory of the car\n", "turn left at the junction\n"]
    tokenizer.train_from_iterator(corpus * 10, trainer)
    # Like Gemma's tokenizer, add "<bos>" automatically: the prompt path must switch that off.
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_prompt_ids_from_tokenizer(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    ids = prompt_token_ids_from_tokenizer(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "<bos>" and ids[0] == BOS
    assert pieces[-1] == "\n"
    assert "".join(pieces[1:]) == "predict trajectory\n"
    assert IMAGE not in ids and PAD not in ids and ids.count(BOS) == 1  # no automatic BOS/EOS, no image token
    info = read_tokenizer_prompt(tokenizer_dir)
    assert (info.image_token_id, info.pad_token_id, info.bos_token_id) == (IMAGE, PAD, BOS)
    assert info.vocab_size == len(tokenizer)
    # The full processor string tokenizes to image tokens followed by exactly these ids.
    full = tokenizer(prompt_string(3), add_special_tokens=False)["input_ids"]
    assert full == [IMAGE] * 3 + ids


def test_tokenizer_without_image_token_is_rejected(tmp_path: Path) -> None:
    folder = build_tiny_tokenizer(tmp_path / "tok", add_image_token=False)
    with pytest.raises(ValueError, match="<image>"):
        prompt_token_ids_from_tokenizer(folder)
    with pytest.raises(FileNotFoundError):
        prompt_token_ids_from_tokenizer(tmp_path / "missing")


def test_prompt_layout_matches_fixture_inputs(drivemoe_reference: Path) -> None:
    """The fixtures' input_ids/attention_mask are exactly our layout of their fake prompt ids."""
    from safetensors.numpy import load_file

    cases = {"tiny_drivemoe": 48, "tiny_drivepi0": 32}  # image tokens (README section 3)
    prompts = ([2, 17, 33, 108], [2, 17, 33, 41, 59, 108])
    for folder, num_image_tokens in cases.items():
        inputs = load_file(str(drivemoe_reference / folder / "inputs.safetensors"))
        max_seq_len = inputs["input_ids"].shape[1]
        assert max_seq_len == num_image_tokens + 8
        for sample, prompt_ids in enumerate(prompts):
            input_ids, mask = build_prompt_tokens(prompt_ids, num_image_tokens, max_seq_len, image_token_id=128)
            np.testing.assert_array_equal(input_ids, inputs["input_ids"][sample])
            np.testing.assert_array_equal(mask, inputs["attention_mask"][sample])


def test_prompt_layout_errors() -> None:
    ids, mask = build_prompt_tokens([5, 6, 7], num_image_tokens=2, max_seq_len=8, image_token_id=9)
    assert ids.tolist() == [9, 9, 5, 6, 7, 0, 0, 0] and mask.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="exceed max_seq_len 4"):
        build_prompt_tokens([5, 6, 7], num_image_tokens=2, max_seq_len=4, image_token_id=9)
    with pytest.raises(ValueError, match="pad id"):
        build_prompt_tokens([5, 0], num_image_tokens=2, max_seq_len=8, image_token_id=9)
    with pytest.raises(ValueError, match="empty"):
        build_prompt_tokens([], num_image_tokens=2, max_seq_len=8, image_token_id=9)


def test_shrink_embedding_rows_keeps_rows_and_remaps_ids() -> None:
    weight = torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3)
    other = torch.ones(2)
    state = {"embed_tokens.weight": weight, "other": other}
    keep = [17, 0, 4, 2, 17, 9]
    shrunk, vocab = shrink_embedding_rows(state, keep)
    assert vocab.kept_ids == (0, 2, 4, 9, 17)
    assert shrunk["embed_tokens.weight"].shape == (5, 3)
    for old in vocab.kept_ids:
        torch.testing.assert_close(shrunk["embed_tokens.weight"][vocab.new_id(old)], weight[old])
    assert vocab.new_id(0) == 0  # pad keeps id 0
    assert shrunk["other"] is other and state["embed_tokens.weight"] is weight  # input untouched
    with pytest.raises(ValueError, match="dropped"):
        vocab.new_id(3)
    with pytest.raises(ValueError, match="outside"):
        shrink_embedding_rows(state, [0, 20])
    # Paper scale: 257216 x 2048 in bf16, keeping e.g. 6 rows, saves ~1.05 GB.
    assert embedding_bytes_saved(257216, 2048, 6, 2) == (257216 - 6) * 4096


def build_fixture_vocab_tokenizer(folder: Path, vocab_size: int = 192, image_id: int = 128) -> Path:
    """A word-level tokenizer whose ids equal the reference fixtures' fake vocabulary (README section 3)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    named = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "predict": 17, " trajectory": 33, "\n": 108, "<image>": image_id}
    by_id = {v: k for k, v in named.items()}
    vocab = {by_id.get(i, f"<unused{i}>"): i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^ \n]+|\n"), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.save_pretrained(str(folder))
    return folder


def test_prompt_ids_for_config_checks_the_vocabulary(tmp_path: Path, tokenizer_dir: Path) -> None:
    from model.config import ModelConfig
    from model.prompt import prompt_ids_for_config

    config = ModelConfig.preset("tiny-drivemoe")
    folder = build_fixture_vocab_tokenizer(tmp_path / "fixture_vocab")
    assert prompt_ids_for_config(folder, config) == (2, 17, 33, 108)
    with pytest.raises(ValueError, match=r"<image> is id 4 in the tokenizer but 128"):
        prompt_ids_for_config(tokenizer_dir, config)
    wrong_image = build_fixture_vocab_tokenizer(tmp_path / "wrong", image_id=129)
    with pytest.raises(ValueError, match="tiny-drivemoe"):
        prompt_ids_for_config(wrong_image, config)


def test_tokenizer_to_converted_folder_to_policy_reproduces_fixture(tmp_path: Path, drivemoe_reference: Path) -> None:
    """tokenizer -> prompt ids -> convert -> from_pretrained -> predict gives the authors' outputs (sample 0)."""
    import json

    from model.config import ModelConfig
    from model.convert import convert_official
    from model.policy import DrivePolicy
    from model.prompt import prompt_ids_for_config

    folder = drivemoe_reference / "tiny_drivemoe"
    config = ModelConfig.from_official(json.loads((folder / "config.json").read_text())["resolved_merged_config"])
    ids = prompt_ids_for_config(build_fixture_vocab_tokenizer(tmp_path / "tok"), config)
    convert_official(folder / "official_checkpoint.pt", config, tmp_path / "converted", prompt_ids=ids)
    policy = DrivePolicy.from_pretrained(tmp_path / "converted")
    assert policy.config.sequence.prompt_token_ids == (2, 17, 33, 108)
    prediction, expected = predict_fixture_sample0(policy, folder)
    np.testing.assert_allclose(prediction.normalized_actions, expected["final_action"][0], atol=1e-5, rtol=1e-5)


def test_shrunk_text_embedding_gives_identical_predictions() -> None:
    from model.cameras import MODEL_IMAGE_ORDER
    from model.config import ModelConfig
    from model.drivemoe import DriveMoE
    from model.ego_state import EgoStateHistory
    from model.policy import DrivePolicy, Observation
    from model.prompt import shrink_model_text_embeddings

    torch.manual_seed(0)
    base = ModelConfig.preset("tiny-drivemoe")
    config = dataclasses.replace(base, sequence=dataclasses.replace(base.sequence, prompt_token_ids=(2, 17, 33, 108)))
    model = DriveMoE(config).eval()
    shrunk_model, shrunk_config = shrink_model_text_embeddings(model, config)
    seq = shrunk_config.sequence
    assert seq.vocab_size == 6 and shrunk_model.embed_tokens.weight.shape == (6, 64)
    assert (seq.pad_token_id, seq.image_token_id, seq.prompt_token_ids) == (0, 5, (1, 2, 3, 4))
    torch.testing.assert_close(shrunk_model.embed_tokens.weight[4], model.embed_tokens.weight[108])
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for c in MODEL_IMAGE_ORDER}
    history = EgoStateHistory(np.full(5, 3.0), np.zeros((5, 3)), np.zeros((5, 3)), np.zeros(5), np.tile([20.0, 2.0], (5, 1)))
    obs = Observation(images=images, ego_history=history, seed=0)
    before = DrivePolicy(model, config).predict(obs)
    after = DrivePolicy(shrunk_model, shrunk_config).predict(obs)
    np.testing.assert_array_equal(before.normalized_actions, after.normalized_actions)
    np.testing.assert_array_equal(before.camera_logits, after.camera_logits)


def test_convert_cli_with_tokenizer_and_shrunk_embedding_reproduces_fixture(tmp_path: Path, drivemoe_reference: Path) -> None:
    """`drivemoe convert --tokenizer DIR --shrink-text-embedding`: ids from the tokenizer, a vocabulary
    of a few rows, and still the authors' outputs."""
    from model.cameras import MODEL_IMAGE_ORDER
    from model.cli import main as cli_main
    from model.policy import DrivePolicy

    folder = drivemoe_reference / "tiny_drivemoe"
    tokenizer = build_fixture_vocab_tokenizer(tmp_path / "tok")
    out = tmp_path / "converted"
    assert cli_main(["convert", "--official", str(folder / "official_checkpoint.pt"), "--official-config",
                     str(folder / "config.json"), "--tokenizer", str(tokenizer), "--shrink-text-embedding",
                     "--out", str(out)]) == 0
    policy = DrivePolicy.from_pretrained(out)
    sequence = policy.config.sequence
    assert sequence.vocab_size == 6  # the four prompt ids + pad + image token
    assert policy.model.embed_tokens.weight.shape[0] == 6
    assert len(set(sequence.prompt_token_ids) | {sequence.pad_token_id, sequence.image_token_id}) == 6

    prediction, expected = predict_fixture_sample0(policy, folder)
    np.testing.assert_allclose(prediction.normalized_actions, expected["final_action"][0], atol=1e-5, rtol=1e-5)
    assert prediction.selected_cameras == (MODEL_IMAGE_ORDER[2 + int(expected["selected_view"][0])],)


def test_convert_cli_rejects_tokenizer_with_prompt_ids(tmp_path: Path, drivemoe_reference: Path, capsys) -> None:
    from model.cli import main as cli_main

    folder = drivemoe_reference / "tiny_drivemoe"
    with pytest.raises(SystemExit):
        cli_main(["convert", "--official", str(folder / "official_checkpoint.pt"), "--preset", "tiny-drivemoe",
                  "--tokenizer", str(tmp_path), "--prompt-ids", "2,17", "--out", str(tmp_path / "out")])
    assert "not allowed with argument" in capsys.readouterr().err


def predict_fixture_sample0(policy, folder: Path):
    """The policy's prediction for sample 0 of a reference fixture's inputs, and the expected outputs."""
    from safetensors.numpy import load_file

    from model.cameras import MODEL_IMAGE_ORDER
    from model.ego_state import EgoStateHistory
    from model.image_preprocessing import PreparedImage
    from model.policy import Observation

    inputs = load_file(str(folder / "inputs.safetensors"))
    expected = load_file(str(folder / "expected_inference.safetensors"))
    raw = inputs["raw_images_uint8"][0]
    history = EgoStateHistory(
        speed=inputs["raw_his_speed"][0], acceleration=inputs["raw_his_acceleration"][0],
        angular_velocity=inputs["raw_his_angular_velocity"][0], theta=inputs["raw_his_theta"][0],
        command_far=np.stack([inputs["raw_x_command_far"][0], inputs["raw_y_command_far"][0]], axis=1),
    )
    prediction = policy.predict(Observation(
        images={c: PreparedImage(raw[i], c) for i, c in enumerate(MODEL_IMAGE_ORDER)}, ego_history=history,
        jpeg_quality=None, noise=inputs["init_noise"][0],
    ))
    return prediction, expected

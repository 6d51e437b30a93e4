"""Docs check: every command in README.md and weights/README.md names sub-commands and flags that
exist (`drivemoe`, `bench2drive-eval`, `hf`, Bench2Drive's evaluator, CARLA's launcher), paths in this
checkout that exist, extras setup.py declares, and output folders the commands really write."""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, SHARED

DOCS = ("README.md", "weights/README.md")
TOP_FOLDERS = ("agent/", "configs/", "docs/", "model/", "bench2drive_eval/", "tests/", "benchmarks/")
# Bench2Drive's own launch of CARLA (leaderboard_evaluator.py, _setup_simulation)
CARLA_FLAGS = {"-RenderOffScreen", "-nosound", "-carla-rpc-port", "-graphicsadapter"}


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


INLINE_COMMAND = re.compile(r"`((?:drivemoe|bench2drive-eval|python -m) [^`]+)`")


def commands(doc: str) -> list[list[str]]:
    """Each shell command of the doc's bash blocks, and each inline `drivemoe ...` / `bench2drive-eval ...` /
    `python -m ...` span of its prose, as tokens (continuations joined, comments dropped)."""
    out = []
    text = (REPO_ROOT / doc).read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for block in [*code_blocks(text), *INLINE_COMMAND.findall(prose)]:
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line):
                tokens = shlex.split(part, comments=True)
                while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # VAR=value cmd
                    tokens = tokens[1:]
                if tokens:
                    out.append(tokens)
    return out


def all_commands() -> list[tuple[str, list[str]]]:
    return [(doc, tokens) for doc in DOCS for tokens in commands(doc)]


def option_strings(subcommands: dict[str, tuple[str, str]], name: str) -> set[str]:
    parser = argparse.ArgumentParser()
    importlib.import_module(subcommands[name][0]).add_arguments(parser)
    return {s for action in parser._actions for s in action.option_strings}


def flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--")]


def value_after(tokens: list[str], flag: str) -> str | None:
    for i, token in enumerate(tokens):
        if token == flag and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def test_the_two_first_commands_stay_on_top() -> None:
    first = code_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"))[0].strip().splitlines()
    assert first[0].endswith("&& drivemoe demo") and "pip install torch==2.13.0 -e '.[test,carla]'" in first[0]
    assert first[1] == "python -m pytest"


def test_every_drivemoe_and_bench2drive_eval_command_exists_with_its_flags() -> None:
    from bench2drive_eval.cli import SUBCOMMANDS as EVAL_SUBCOMMANDS
    from model.cli import SUBCOMMANDS as MODEL_SUBCOMMANDS

    checked = 0
    for doc, tokens in all_commands():
        table = {"drivemoe": MODEL_SUBCOMMANDS, "bench2drive-eval": EVAL_SUBCOMMANDS}.get(tokens[0])
        if table is None:
            continue
        assert len(tokens) > 1 and tokens[1] in table, f"{doc}: unknown sub-command in {' '.join(tokens)}"
        known = option_strings(table, tokens[1])
        unknown = [f for f in flags(tokens) if f not in known]
        assert not unknown, f"{doc}: {tokens[0]} {tokens[1]} has no {unknown}"
        checked += 1
    assert checked >= 15


def test_download_release_names_in_the_docs_exist() -> None:
    from model.download import RELEASES

    for doc, tokens in all_commands():
        if tokens[:2] == ["drivemoe", "download"] and len(tokens) > 2:
            assert tokens[2] in RELEASES, f"{doc}: {tokens[2]} is not a release"
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8") + (REPO_ROOT / "weights/README.md").read_text(encoding="utf-8")
    for name in re.findall(r"weights/([a-z0-9-]+)(?=[/`\s])", text):
        assert name in RELEASES or name in {"official", "paligemma-tokenizer", "demo", "paligemma-3b-pt-224", "README"}, name


def test_paths_into_the_checkout_exist() -> None:
    for doc in DOCS:
        text = (REPO_ROOT / doc).read_text(encoding="utf-8")
        candidates = set(re.findall(r"`([^`\s]+)`", text))
        for _, tokens in all_commands():
            candidates.update(tokens)
        candidates.update(re.findall(r"/path/to/drivemoe/(\S+)", text))
        for token in candidates:
            token = token.rstrip(",.")
            if not token.startswith(TOP_FOLDERS) or "<" in token or "*" in token:
                continue
            assert (REPO_ROOT / token).exists(), f"{doc}: {token} does not exist in the checkout"


def test_shipped_config_lines_quoted_in_the_readme_are_the_files() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for name, value in re.findall(r"`(configs/agent/[a-z0-9_]+\.yaml)` holds `checkpoint: ([^`]+)`", text):
        assert yaml.safe_load((REPO_ROOT / name).read_text())["checkpoint"] == value
    for name, target in re.findall(r"`(configs/agent/[a-z0-9_]+\.yaml)`(?: and `official\.yaml`)? points? at\s+`weights/([a-z0-9-]+)`", text):
        assert Path(yaml.safe_load((REPO_ROOT / name).read_text())["checkpoint"]).name == target
    # every shipped agent config is mentioned
    for path in (REPO_ROOT / "configs" / "agent").glob("*.yaml"):
        assert path.name in text, f"README does not mention configs/agent/{path.name}"


def test_pip_extras_exist() -> None:
    setup = (REPO_ROOT / "setup.py").read_text(encoding="utf-8")
    declared = set(re.findall(r'^\s+"([a-z]+)": \[', setup, flags=re.M))
    for doc, tokens in all_commands():
        if tokens[0] != "pip":
            continue
        for token in tokens:
            match = re.fullmatch(r"\.\[([a-z,]+)\]", token)
            if match:
                assert set(match.group(1).split(",")) <= declared, f"{doc}: {token}: setup.py declares {sorted(declared)}"


def test_evaluator_and_carla_flags_are_upstream_ones() -> None:
    reference = (SHARED / "reference" / "BENCH2DRIVE.md")
    if not reference.is_file():
        pytest.skip(f"{reference} not found")
    arguments = reference.read_text(encoding="utf-8").split("Arguments:", 1)[1].split("It needs", 1)[0]
    upstream = set(re.findall(r"--[a-z-]+", arguments))
    seen = {"evaluator": 0, "carla": 0}
    for doc, tokens in all_commands():
        if any(t.endswith("leaderboard_evaluator.py") for t in tokens):
            assert set(flags(tokens)) <= upstream, f"{doc}: evaluator flags {set(flags(tokens)) - upstream} are not upstream's"
            assert value_after(tokens, "--agent").endswith("agent/drivemoe_agent.py")
            seen["evaluator"] += 1
        if tokens[0].endswith("CarlaUE4.sh"):
            used = {t.split("=", 1)[0] for t in tokens[1:]}
            assert used <= CARLA_FLAGS, f"{doc}: {used - CARLA_FLAGS}"
            seen["carla"] += 1
    assert seen == {"evaluator": 1, "carla": 1}


HF = Path(sys.executable).parent / "hf"  # installed with huggingface_hub


@pytest.mark.skipif(not HF.exists(), reason="the huggingface_hub `hf` CLI is not installed beside this Python")
def test_hf_commands_exist_with_their_flags() -> None:
    wanted: dict[tuple[str, ...], set[str]] = {}
    for doc, tokens in all_commands():
        if tokens[0] == "hf":
            words = tuple(t for t in tokens[1:3] if not t.startswith("-") and "/" not in t)
            wanted.setdefault(words, set()).update(flags(tokens))
    assert ("auth", "login") in wanted and ("download",) in wanted
    for words, used in wanted.items():
        help_text = subprocess.run([str(HF), *words, "--help"], capture_output=True, text=True, timeout=120).stdout
        assert f"Usage: hf {' '.join(words)}" in help_text, f"hf {' '.join(words)} is not an hf command"
        for flag in used:
            assert flag in help_text, f"hf {' '.join(words)} has no {flag}"


def test_run_outputs_named_in_the_readme_match_the_runner_layout(tmp_path) -> None:
    from bench2drive_eval.run_state import RunLayout

    layout = RunLayout(tmp_path / "runs" / "drivemoe_220")
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"`runs/drivemoe_220/{layout.results.name}/`" in text and f"`runs/drivemoe_220/{layout.save_path.name}/`" in text
    for doc, tokens in all_commands():
        if tokens[:2] == ["bench2drive-eval", "metrics"] and value_after(tokens, "--save-path"):
            run = Path(tokens[2])
            assert Path(value_after(tokens, "--save-path")) == run / layout.save_path.name, f"{doc}: --save-path is not the run's save/"


def test_python_module_commands_exist() -> None:
    seen = 0
    for doc, tokens in all_commands():
        if tokens[:2] == ["python", "-m"] and tokens[2] != "pytest":
            source = REPO_ROOT / (tokens[2].replace(".", "/") + ".py")
            assert source.is_file(), f"{doc}: no module {tokens[2]}"
            text = source.read_text(encoding="utf-8")
            for flag in flags(tokens):
                assert f'"{flag}"' in text, f"{doc}: {tokens[2]} has no {flag}"
            seen += 1
    assert seen >= 1


def test_route_ids_in_the_docs_are_bench2drive220_routes() -> None:
    routes = SHARED / "bench2drive" / "routes" / "bench2drive220.xml"
    if not routes.is_file():
        pytest.skip(f"{routes} not found")
    ids = set(re.findall(r'<route id="(\d+)"', routes.read_text(encoding="utf-8")))
    subsets = [value_after(tokens, "--routes-subset") for _, tokens in all_commands()]
    subsets = [s for s in subsets if s]
    assert subsets and all(set(s.split(",")) <= ids for s in subsets), subsets

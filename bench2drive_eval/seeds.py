"""Multi-seed runs: `bench2drive-eval run --seeds 0,1,2` as one resumable sub-run per agent seed, and reading them back.

RUN/seeds.json lists the seeds; RUN/agent_configs/seed_<n>.yaml is the agent YAML with `seed: <n>`;
RUN/seed_<n>/ is an ordinary run folder (its run_state.json records the seed), so `status`, `metrics` and
`compare` work on each, and `compare` reads RUN as the group of its sub-runs.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from bench2drive_eval.jsonio import JSONFileError, read_json, read_text_file, write_json_atomic, write_text_atomic

SEEDS_FILE = "seeds.json"
FORMAT = "bench2drive-eval-seeds/1"
STOPPED_EXIT = 130
ARGUMENT_EXIT = 2


class SeedsError(ValueError):
    """A bad --seeds argument, agent config or multi-seed run folder; one line."""


def parse_seeds(text: str) -> tuple[int, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        seeds = tuple(int(t) for t in items)
    except ValueError:
        raise SeedsError(f"--seeds: {text!r} is not a comma-separated list of integer seeds") from None
    if not seeds:
        raise SeedsError("--seeds: the seed list is empty")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise SeedsError(f"--seeds: {text!r} has negative or repeated seeds")
    return seeds


def sub_run_dir(root: Path, seed: int) -> Path:
    return root / f"seed_{seed}"


def derived_config_path(root: Path, seed: int) -> Path:
    return root / "agent_configs" / f"seed_{seed}.yaml"


@dataclass(frozen=True)
class SeedManifest:
    seeds: tuple[int, ...]
    agent_config: str  # the YAML the derived ones were made from (absolute), with its '+extra' part
    created: str

    def to_json(self) -> dict:
        return {"format": FORMAT, "seeds": list(self.seeds), "agent_config": self.agent_config,
                "created": self.created, "sub_runs": {str(s): f"seed_{s}" for s in self.seeds}}


def read_manifest(root: Path) -> SeedManifest | None:
    """The manifest of a multi-seed run folder, or None if `root` is not one."""
    path = Path(root) / SEEDS_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    try:
        if data["format"] != FORMAT:
            raise ValueError(f"format {data['format']!r}")
        seeds = tuple(int(s) for s in data["seeds"])
        return SeedManifest(seeds, str(data["agent_config"]), str(data.get("created", "")))
    except (KeyError, TypeError, ValueError) as error:
        raise JSONFileError(f"{path}: not a multi-seed run manifest ({type(error).__name__}: {error})") from None


def expand_runs(path: str | Path) -> list[tuple[str, Path]]:
    """(label, path) of each run a path stands for: the sub-runs of a multi-seed folder, else the path itself."""
    path = Path(path)
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None:
        return [(path.stem, path)]
    return [(f"{path.name}/seed_{s}", sub_run_dir(path, s)) for s in manifest.seeds]


def write_derived_config(source: Path, seed: int, dest: Path) -> None:
    """The agent YAML with `seed` set; a relative checkpoint path is made absolute (the copy lives elsewhere)."""
    text = read_text_file(source, SeedsError, f"--agent-config {source}")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SeedsError(f"--agent-config {source}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise SeedsError(f"--agent-config {source}: --seeds needs a YAML mapping of agent fields, got "
                         f"{type(values).__name__}")
    values["seed"] = seed
    checkpoint = values.get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint and not Path(checkpoint).expanduser().is_absolute():
        values["checkpoint"] = str((source.parent / checkpoint).resolve())
    header = f"# written by `bench2drive-eval run --seeds` from {source}: the same fields with seed: {seed}\n"
    write_text_atomic(dest, header + yaml.safe_dump(values, sort_keys=False))


def _split_config_argument(argument: str) -> tuple[Path, str]:
    path, plus, extra = argument.partition("+")
    return Path(path).resolve(), plus + extra


def run_seeds(args: argparse.Namespace, run_one: Callable[[argparse.Namespace], int]) -> int:
    """Run (or resume) every seed's sub-run in turn with `run_one`; stop at the first interrupted one."""
    root = args.out.resolve()
    manifest = read_manifest(root)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    created = manifest is None
    if manifest is None:
        if seeds is None:
            raise SeedsError(f"--out {root}: not a multi-seed run folder (no {SEEDS_FILE})")
        if root.exists() and any(root.iterdir()):
            raise SeedsError(f"--out: {root} exists, is not empty and is not a multi-seed run folder")
        if not args.agent_config:
            raise SeedsError("--seeds needs --agent-config: the YAML whose `seed` each sub-run sets")
        source, extra = _split_config_argument(args.agent_config)
        if not source.is_file():
            raise SeedsError(f"--agent-config: file not found: {source}")
        manifest = SeedManifest(seeds, str(source) + extra,
                                _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for seed in seeds:  # every derived YAML is checked before anything runs
            write_derived_config(source, seed, derived_config_path(root, seed))
        write_json_atomic(root / SEEDS_FILE, manifest.to_json())
    else:
        if seeds is not None and seeds != manifest.seeds:
            raise SeedsError(f"{root} was started with --seeds {','.join(map(str, manifest.seeds))}; use another --out")
        if args.agent_config:
            source, extra = _split_config_argument(args.agent_config)
            if str(source) + extra != manifest.agent_config:
                raise SeedsError(f"{root} was started with --agent-config {manifest.agent_config}; use another --out")
    codes: list[int] = []
    for number, seed in enumerate(manifest.seeds, start=1):
        print(f"bench2drive-eval run: seed {seed} ({number} of {len(manifest.seeds)}) in {sub_run_dir(root, seed)}",
              file=sys.stderr)
        sub = copy.copy(args)
        sub.seeds = None
        sub.out = sub_run_dir(root, seed)
        sub.agent_seed = seed
        _, plus, extra = manifest.agent_config.partition("+")
        sub.agent_config = str(derived_config_path(root, seed)) + plus + extra
        code = run_one(sub)
        if code == ARGUMENT_EXIT and created and number == 1 and not sub.out.exists():
            shutil.rmtree(root, ignore_errors=True)  # a new run whose arguments were refused leaves nothing behind
        if code == STOPPED_EXIT:
            print(f"bench2drive-eval run: resume every seed with: bench2drive-eval run --out {root}", file=sys.stderr)
        if code in (ARGUMENT_EXIT, STOPPED_EXIT):
            return code
        codes.append(code)
    done = [f"seed {s}: {'complete' if c == 0 else f'exit {c}'}" for s, c in zip(manifest.seeds, codes)]
    print(f"bench2drive-eval run: {'; '.join(done)}. Compare with: bench2drive-eval compare --a {root} --b OTHER_RUN")
    return max(codes, default=0)

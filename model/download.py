"""`drivemoe download`: a released checkpoint from Hugging Face -> a converted folder + ready agent configs.

    drivemoe download drivemoe-base-bf16 [--out weights] [--token TOKEN | --tokenizer DIR] [--device cuda]

Layout under --out (default `weights/`, so run it from the checkout's root):

    official/<file>.pt            the authors' file as published (+ <file>.pt.sha256 once verified)
    paligemma-tokenizer/          the tokenizer files of google/paligemma-3b-pt-224 (gated; no weights)
    <release>/                    model.safetensors + config.json + agent_default.yaml + agent_official.yaml

Transfers go through huggingface_hub (token, endpoint `HF_ENDPOINT`, redirects, retries, progress bar)
into `<file>.part`, which is kept when a transfer stops, so running the command again resumes it with a
Range request (huggingface_hub's own hf_hub_download deletes its partial file on failure). A finished
file is checked against the size and sha256 the hub reports, then renamed into place; a rerun finds it
and does not transfer it again. With `HF_HUB_OFFLINE=1` only files already downloaded are used.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from tqdm import tqdm

from model.errors import DriveMoEError

REPO = "rethinklab/DriveMoE"
TOKENIZER_REPO = "google/paligemma-3b-pt-224"
# AutoTokenizer needs the first two; the others are read when present.
TOKENIZER_REQUIRED = ("tokenizer_config.json", "tokenizer.json")
TOKENIZER_OPTIONAL = ("tokenizer.model", "special_tokens_map.json", "added_tokens.json")
TOKENIZER_FOLDER = "paligemma-tokenizer"
OFFICIAL_FOLDER = "official"
AGENT_PRESETS = ("default", "official")
DISK_MARGIN = 64 * 2**20  # bytes kept free beyond what a file needs


class DownloadError(DriveMoEError):
    """Getting or converting a released file failed; the message says why and what to do."""


@dataclass(frozen=True)
class Release:
    """One released checkpoint of the authors' Hugging Face repo."""

    name: str  # our name, also the converted folder's name
    filenames: tuple[str, ...]  # the name in the repo; alternative spellings after it
    preset: str  # architecture preset (model/config.py)
    dtype: str  # stored precision, as published
    description: str


RELEASES: dict[str, Release] = {release.name: release for release in (
    # The authors' docs/evaluation.md links DriveMoE_Base_bf16.pt; a third-party download script
    # spells it DriveMoE_base_bf16.pt (13,520,189,565 bytes). Whichever the repo holds is used.
    Release("drivemoe-base-bf16", ("DriveMoE_Base_bf16.pt", "DriveMoE_base_bf16.pt"), "drivemoe-base", "bfloat16",
            "DriveMoE, Bench2Drive-Base, stage 2, bf16 (about 13.5 GB with optimiser states)"),
    Release("drivepi0-base-bf16", ("DrivePi0_Base_bf16.pt",), "drivepi0-base", "bfloat16", "Drive-pi0, Bench2Drive-Base, bf16"),
    Release("drivepi0-base-fp32", ("DrivePi0_Base_fp32.pt",), "drivepi0-base", "float32", "Drive-pi0, Bench2Drive-Base, fp32"),
    Release("drivepi0-full-fp32", ("DrivePi0_Full_fp32.pt",), "drivepi0-base", "float32", "Drive-pi0, Bench2Drive-Full, fp32"),
)}


def _hub():
    """huggingface_hub's pieces used here (imported lazily: `drivemoe --help` stays fast)."""
    import huggingface_hub
    from huggingface_hub import constants, errors, file_download, utils

    return huggingface_hub, constants, errors, file_download, utils


def hub_endpoint() -> str:
    """HF_ENDPOINT read now (huggingface_hub reads it once, at import)."""
    _, constants, _, _, _ = _hub()
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    _, constants, _, _, _ = _hub()
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE if value is None else value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve_token(explicit: str | None) -> str | None:
    """--token, else HF_TOKEN, else the token `hf auth login` stored."""
    if explicit:
        return explicit
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    huggingface_hub, _, _, _, _ = _hub()
    return huggingface_hub.get_token()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as stream, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}",
                                         disable=size < 256 * 2**20) as bar:
        while chunk := stream.read(16 * 2**20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _is_sha256(etag: str | None) -> bool:
    return bool(etag) and re.fullmatch(r"[0-9a-f]{64}", etag) is not None


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**28 else f"{size / 2**20:.1f} MiB"


def require_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN:
        raise DownloadError(f"not enough disk space in {folder}: {what} needs {_gib(needed)}, {_gib(free)} free")


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class HubFile:
    """One file of a hub repo: its metadata (HEAD) and a resumable transfer into a local folder."""

    def __init__(self, repo: str, filename: str, token: str | None, revision: str = "main") -> None:
        self.repo, self.filename, self.token, self.revision = repo, filename, token, revision
        self.endpoint = hub_endpoint()
        _, _, _, file_download, _ = _hub()
        self.url = file_download.hf_hub_url(repo, filename, revision=revision, endpoint=self.endpoint)

    def metadata(self):
        """The hub's size / etag (sha256 for LFS files); None when the file does not exist there."""
        _, _, errors, file_download, _ = _hub()
        try:
            return file_download.get_hf_file_metadata(self.url, token=self.token or False, endpoint=self.endpoint)
        except errors.EntryNotFoundError:
            return None
        except errors.GatedRepoError as error:
            raise self._gated(error) from None
        except errors.RepositoryNotFoundError:
            hint = "" if self.token else " (no token given: a private or gated repo needs one)"
            raise DownloadError(f"{self.endpoint}/{self.repo}: repository not found or not accessible with this token{hint}") from None
        except errors.HfHubHTTPError as error:
            if getattr(getattr(error, "response", None), "status_code", None) == 401:
                raise DownloadError(f"{self.endpoint} rejected the Hugging Face token (HTTP 401, {_first_line(error)}): "
                                    f"check --token / HF_TOKEN, or log in again with `hf auth login`") from None
            raise DownloadError(f"{self.url}: {_first_line(error)}") from None
        except Exception as error:  # connection refused, DNS, timeout, proxy: no network to the hub
            raise DownloadError(
                f"cannot reach {self.endpoint} for {self.repo}/{self.filename} ({type(error).__name__}: {_first_line(error)}); "
                f"files already downloaded can be used with HF_HUB_OFFLINE=1") from None

    def _gated(self, error) -> DownloadError:
        status = getattr(getattr(error, "response", None), "status_code", None)
        page = f"{self.endpoint}/{self.repo}"
        if status == 403 or self.token:
            return DownloadError(f"{self.repo} is gated and this Hugging Face account has not been granted access "
                                 f"(HTTP {status}): accept the licence on {page} with the account of your token, then rerun")
        return DownloadError(f"{self.repo} is gated: it needs a Hugging Face token of an account that accepted its licence on "
                             f"{page} (run `hf auth login`, set HF_TOKEN, or pass --token)")

    def fetch(self, folder: Path, metadata) -> Path:
        """Transfer into folder/<filename> (resuming folder/<filename>.part), check size and sha256."""
        dest = folder / self.filename
        sidecar = dest.with_name(dest.name + ".sha256")
        expected, etag = metadata.size, metadata.etag
        verifiable = _is_sha256(etag)
        if dest.is_file() and (expected is None or dest.stat().st_size == expected):
            if not verifiable or (sidecar.is_file() and sidecar.read_text().strip() == etag):
                return dest
            if sha256_of(dest) == etag:
                _write_text_atomically(sidecar, etag + "\n")
                return dest
            print(f"{dest} differs from the hub's {self.filename} (sha256): downloading it again")
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.is_file() else 0
        if expected is not None and have > expected:
            part.unlink()
            have = 0
        if expected is not None:
            require_free_space(folder, expected - have, f"{self.filename} ({_gib(expected)}{', resuming' if have else ''})")
        if have:
            print(f"resuming {self.filename} at {_gib(have)} of {_gib(expected) if expected else '?'} ({part})")
        self._transfer(part, have, expected)
        got = part.stat().st_size
        if expected is not None and got != expected:
            raise DownloadError(f"{part}: {got} bytes after the transfer, the hub says {expected}; run the same command again to resume")
        if verifiable:
            digest = sha256_of(part)
            if digest != etag:
                part.unlink()
                raise DownloadError(f"wrong file: {self.repo}/{self.filename} arrived with sha256 {digest}, the hub lists {etag}; "
                                    f"the partial file was deleted, run the command again")
        os.replace(part, dest)
        if verifiable:
            _write_text_atomically(sidecar, etag + "\n")
        return dest

    def _transfer(self, part: Path, have: int, expected: int | None) -> None:
        _, _, errors, file_download, utils = _hub()
        headers = utils.build_hf_headers(token=self.token or False)
        kept = f"the partial file {part} is kept: run the same command again to resume"
        try:
            with part.open("ab") as stream:
                file_download.http_get(self.url, stream, resume_size=have, headers=headers, expected_size=expected,
                                       displayed_filename=self.filename)
        except KeyboardInterrupt:
            raise DownloadError(f"interrupted while downloading {self.filename}; {kept}") from None
        except errors.GatedRepoError as error:
            raise self._gated(error) from None
        except OSError as error:
            if getattr(error, "errno", None) == errno.ENOSPC:
                raise DownloadError(f"no space left on the device of {part}; free space, then rerun to resume") from None
            if isinstance(error, errors.HfHubHTTPError) or not getattr(error, "errno", None):
                raise DownloadError(f"transfer of {self.filename} stopped ({_first_line(error)}); {kept}") from None
            raise DownloadError(f"cannot write {part}: {error.strerror}") from None
        except Exception as error:  # httpx connection / protocol errors after the retries
            raise DownloadError(f"transfer of {self.filename} stopped ({type(error).__name__}: {_first_line(error)}); {kept}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return next((line for line in text.splitlines() if line.strip()), type(error).__name__)


def fetch(repo: str, candidates: tuple[str, ...], folder: Path, token: str | None, revision: str = "main",
          optional: bool = False) -> Path | None:
    """The first of `candidates` the repo holds, downloaded into folder (or found there when offline)."""
    folder.mkdir(parents=True, exist_ok=True)
    if hub_offline():
        for name in candidates:
            if (folder / name).is_file():
                return folder / name
        if optional:
            return None
        raise DownloadError(f"offline (HF_HUB_OFFLINE=1) and {folder / candidates[0]} is not downloaded yet")
    for name in candidates:
        hub_file = HubFile(repo, name, token, revision)
        metadata = hub_file.metadata()
        if metadata is not None:
            return hub_file.fetch(folder, metadata)
    if optional:
        return None
    raise DownloadError(f"{hub_endpoint()}/{repo} (revision {revision}) has no file {' or '.join(candidates)}")


def tokenizer_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in TOKENIZER_REQUIRED)


def fetch_tokenizer(folder: Path, token: str | None) -> Path:
    """The PaliGemma tokenizer files only (not the 3B weights); reused when already there."""
    if tokenizer_complete(folder):
        return folder
    if not token and not hub_offline():
        raise DownloadError(f"the prompt ids come from the tokenizer of the gated {TOKENIZER_REPO}: accept its licence on "
                            f"{hub_endpoint()}/{TOKENIZER_REPO}, then run `hf auth login`, set HF_TOKEN or pass --token "
                            f"(or pass --tokenizer DIR with the tokenizer files already on disk)")
    for name in TOKENIZER_REQUIRED:
        fetch(TOKENIZER_REPO, (name,), folder, token)
    for name in TOKENIZER_OPTIONAL:
        fetch(TOKENIZER_REPO, (name,), folder, token, optional=True)
    return folder


def converted_size(preset: str, dtype: str) -> int:
    """Bytes of model.safetensors for an architecture (parameters built on the meta device)."""
    import torch

    from model.checkpoints import parse_dtype
    from model.config import ModelConfig
    from model.drivemoe import DriveMoE

    with torch.device("meta"):
        model = DriveMoE(ModelConfig.preset(preset), dtype=parse_dtype(dtype))
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def agent_config_text(release_name: str, preset: str, device: str) -> str:
    return (f"# Written by `drivemoe download {release_name}`; every field: docs/agent-config.md.\n"
            f"# `checkpoint: .` is this folder (relative paths resolve against this file's folder).\n"
            f"checkpoint: .\n"
            f"device: {device}\n"
            f"preset: {preset}\n")


def already_converted(folder: Path, sha256: str | None, settings: dict) -> bool:
    import json

    config = folder / "config.json"
    if not (config.is_file() and (folder / "model.safetensors").is_file()):
        return False
    try:
        payload = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    source = payload.get("source") or {}
    return sha256 is not None and source.get("official_sha256") == sha256 and all(source.get(k) == v for k, v in settings.items())


def convert_release(official: Path, out: Path, release: Release, preset: str, dtype: str, tokenizer: Path,
                    device: str, shrink: bool) -> Path:
    """Convert into a temporary sibling folder and rename it into place: never a half-written folder."""
    from model.config import ModelConfig
    from model.convert import convert_official
    from model.prompt import prompt_ids_for_config

    sidecar = official.with_name(official.name + ".sha256")
    sha256 = sidecar.read_text().strip() if sidecar.is_file() else None
    settings = {"preset": preset, "stored_dtype": dtype, "shrink_text_embedding": shrink}
    if already_converted(out, sha256, settings):
        print(f"{out} is already converted from {official.name} (sha256 {sha256[:12]}...)")
    else:
        config = ModelConfig.preset(preset)
        prompt_ids = prompt_ids_for_config(tokenizer, config)
        require_free_space(out.parent, converted_size(preset, dtype), f"the converted {release.name} ({dtype})")
        staging = out.with_name(f".{out.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            result = convert_official(official, config, staging, dtype=dtype, prompt_ids=prompt_ids, shrink_text_embedding=shrink,
                                      source_extra={"official_sha256": sha256, "release": release.name, **settings})
            for agent_preset in AGENT_PRESETS:
                (staging / f"agent_{agent_preset}.yaml").write_text(agent_config_text(release.name, agent_preset, device), encoding="utf-8")
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            where = getattr(error, "filename", None) or staging
            raise DownloadError(f"cannot write the converted model to {where}: {error.strerror or error}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        print(f"converted {official.name} -> {out} ({result.report.num_parameters:,} parameters, {dtype}, {_gib(result.bytes_on_disk)})")
    for agent_preset in AGENT_PRESETS:  # (re)written so that --device applies to an existing folder too
        _write_text_atomically(out / f"agent_{agent_preset}.yaml", agent_config_text(release.name, agent_preset, device))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("release", choices=sorted(RELEASES), help="; ".join(f"{r.name}: {r.description}" for r in RELEASES.values()))
    parser.add_argument("--out", default="weights", help="weights folder (default: weights/, i.e. run from the checkout's root)")
    parser.add_argument("--token", help="Hugging Face token (default: HF_TOKEN, else the one `hf auth login` stored)")
    parser.add_argument("--tokenizer", help="a PaliGemma tokenizer folder already on disk (then no token is needed)")
    parser.add_argument("--revision", default="main", help="revision of the checkpoint repo")
    parser.add_argument("--device", default="cuda", help="device written into the agent configs (default cuda)")
    parser.add_argument("--preset", help="architecture preset to convert with (default: the release's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="stored dtype (default: as published)")
    parser.add_argument("--shrink-text-embedding", action="store_true", help="drop the text-embedding rows the prompt never uses")
    parser.add_argument("--no-convert", action="store_true", help="only download")


def main(args: argparse.Namespace) -> int:
    try:
        return _download(args)
    except KeyboardInterrupt:
        raise DownloadError("interrupted; run the same command again to continue (finished files are kept)") from None
    except FileNotFoundError as error:
        raise DownloadError(str(error)) from None
    except OSError as error:  # a folder or file of --out that cannot be created or written
        where = error.filename or args.out
        raise DownloadError(f"cannot write {where}: {error.strerror or error}") from None


def _download(args: argparse.Namespace) -> int:
    release = RELEASES[args.release]
    if args.preset:
        from model.config import ModelConfig

        ModelConfig.preset(args.preset)  # an unknown name fails now, not after a 13 GB transfer
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    token = resolve_token(args.token)
    tokenizer = None
    if not args.no_convert:
        if args.tokenizer:
            tokenizer = Path(args.tokenizer)
            if not tokenizer_complete(tokenizer):
                raise DownloadError(f"--tokenizer {tokenizer}: expected {', '.join(TOKENIZER_REQUIRED)} there")
        else:  # first, so that a token problem shows before a 13 GB transfer
            tokenizer = fetch_tokenizer(root / TOKENIZER_FOLDER, token)
    official = fetch(REPO, release.filenames, root / OFFICIAL_FOLDER, token, revision=args.revision)
    print(f"checkpoint: {official} ({_gib(official.stat().st_size)})")
    if args.no_convert:
        return 0
    out = convert_release(official, root / release.name, release, args.preset or release.preset, args.dtype or release.dtype,
                          tokenizer, args.device, args.shrink_text_embedding)
    for agent_preset in AGENT_PRESETS:
        print(f"agent config ({agent_preset} preset): {(out / f'agent_{agent_preset}.yaml').resolve()}")
    return 0


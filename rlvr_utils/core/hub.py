"""Hub model ids resolved through the local Hugging Face cache only: a run never downloads a model. A hub id
in params stands for the snapshot folder `hf download <id>` put in the cache (HF_HUB_CACHE, by default
~/.cache/huggingface/hub/models--org--name/snapshots/<commit>), and every stage reads that folder like any
local checkpoint (sharded or not). A model that is not there, or only partly, is refused when the params are
checked, with the command that downloads it.
"""
from __future__ import annotations

import json
from pathlib import Path


def download_command(repo_id: str) -> str:
    """The command that puts a hub model into the local cache (huggingface_hub's `hf` CLI)."""
    return f"hf download {repo_id}"


def missing_files(folder: Path) -> list[str]:
    """What a checkpoint folder lacks to be loaded: config.json and its safetensors weights (every shard the
    index names). [] when complete."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing += [s for s in shards if not (folder / s).is_file()]
    elif not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors (the weights)")
    return missing


def snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model (revision 'main'), or None when it is not downloaded or is
    incomplete. Never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (FileNotFoundError, ValueError, OSError):  # LocalEntryNotFoundError, IncompleteSnapshotError, a bad id
        return None
    return folder if not missing_files(folder) else None


def problem(key: str, repo_id: str) -> str | None:
    """Why a hub id named by params key `key` cannot be used offline, with the command that fixes it."""
    from huggingface_hub import constants, snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (FileNotFoundError, ValueError, OSError):
        return (f"{key} (got {repo_id!r}): not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); runs never "
                f"download models: run `{download_command(repo_id)}` first")
    missing = missing_files(folder)
    if missing:
        return (f"{key} (got {repo_id!r}): the cached snapshot {folder} lacks {', '.join(missing)} (an interrupted "
                f"download?): run `{download_command(repo_id)}` again to complete it")
    return None


def declared_bases(folder: Path) -> list[str]:
    """The `base_model` ids a checkpoint's model card (README.md metadata) says it was trained from; [] when it
    has no card or names none."""
    from huggingface_hub import metadata_load

    readme = Path(folder) / "README.md"
    try:
        meta = metadata_load(readme) if readme.is_file() else None
    except (ValueError, OSError):  # a card whose metadata is not YAML says nothing about its base
        return []
    base = (meta or {}).get("base_model") or []
    return [base] if isinstance(base, str) else [str(b) for b in base]

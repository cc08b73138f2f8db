"""The streamed activation store: one memory-mapped `.npy` per (model, site, position selection), and the
shards extraction writes on the way there.

Extraction streams a model's activations to disk in shards of cache rows (each one safetensors file, written
atomically, so an interrupted run resumes from the shards it finished), then joins the shards into one `.npy`
per (site, selection) that `ActivationStore.read` memory-maps. The store's identity is its content's:
`store_fingerprint` hashes the token cache, the model, the sites, layers, positions and dtype.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from rlvr_utils.activations.tokens import TokenCache
from rlvr_utils.core import artifacts

# numpy has no bfloat16: it is stored as its raw 16 bits (uint16) and widened to float32 when read (BFloat16Array)
STORE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "U16": np.uint16, "I64": np.int64}


class BFloat16Array:
    """A stored bfloat16 array (raw uint16, memory-mapped) that reads as float32: indexing and np.asarray
    decode only the rows asked for, so readers treat it as the float arrays of the other dtypes."""

    dtype = np.dtype(np.float32)

    def __init__(self, raw: np.ndarray):
        self.raw = raw
        self.shape = raw.shape
        self.ndim = raw.ndim

    def __len__(self) -> int:
        return len(self.raw)

    @staticmethod
    def decode(bits: np.ndarray) -> np.ndarray:
        return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)

    def __getitem__(self, key) -> np.ndarray:
        return self.decode(self.raw[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.decode(self.raw)
        return out if dtype is None else out.astype(dtype, copy=False)


def file_key(site: str, selection: str) -> str:
    """The key of one stored array: a site name (or 'index') at a selection."""
    return f"{site}@{selection}"


def file_name(key: str) -> str:
    return key.replace("@", "__").replace(":", "-") + ".npy"


class ActivationStore:
    """Activations of several models at the same token positions, under one folder:

        <folder>/<model_name>/<site>__<selection>.npy   float [n, d], memory-mapped when read
        <folder>/<model_name>/index__<selection>.npy    int [n, 2]: (cache row, position) of each row
        <folder>/<model_name>/meta.json                 model, sites, layers, positions, token cache hash
        <folder>/<model_name>/_stamp.json               fingerprint of what made it (written last)
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def models(self) -> list[str]:
        return sorted(p.parent.name for p in self.folder.glob("*/meta.json"))

    def meta(self, model_name: str) -> dict:
        path = self.folder / model_name / "meta.json"
        if not path.exists():
            raise FileNotFoundError(f"no activations for model {model_name!r} in {self.folder}: run 04_extract first")
        return artifacts.read_json(path)

    def index(self, model_name: str, selection: str) -> np.ndarray:
        """(cache row, position) of each stored row of a selection, int [n, 2]."""
        return np.load(self._path(model_name, f"index@{selection}"), mmap_mode="r")

    def read(self, model_name: str, site: str, selection: str) -> tuple[np.ndarray, np.ndarray]:
        """(activations memmap [n, d], cache row of each activation [n]) for one site and selection; a bfloat16
        store's arrays read as float32 (BFloat16Array)."""
        data = np.load(self._path(model_name, file_key(site, selection)), mmap_mode="r")
        if self.meta(model_name).get("dtype") == "bfloat16":
            data = BFloat16Array(data)
        return data, np.asarray(self.index(model_name, selection)[:, 0])

    def iter_chunks(self, model_name: str, site: str, selection: str, chunk_rows: int) -> Iterator[np.ndarray]:
        """Consecutive row chunks of one stored array, read from disk one at a time."""
        data, _ = self.read(model_name, site, selection)
        for start in range(0, len(data), chunk_rows):
            yield np.asarray(data[start:start + chunk_rows])

    def _path(self, model_name: str, key: str) -> Path:
        meta = self.meta(model_name)
        site, _, selection = key.partition("@")
        if selection not in meta["positions"]:
            raise ValueError(f"position selection {selection!r} was not extracted for {model_name}; have {meta['positions']}")
        if site != "index" and site not in meta["site_names"]:
            raise ValueError(f"site {site!r} was not extracted for {model_name}; have {meta['site_names']}")
        return self.folder / model_name / file_name(key)


def store_fingerprint(cache: TokenCache, model_name: str, sites, layers, positions, fingerprint: str = "",
                      dtype: str = "float32") -> str:
    """What a stored model's activations depend on; extraction skips when its stamp holds this value.
    `fingerprint` is what the caller adds (the weights and the params that made them)."""
    key = json.dumps([fingerprint, cache.fingerprint, model_name, sorted(sites), layers, list(positions), dtype])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def stored_rows(folder: Path, selection: str) -> int:
    """Rows stored for a selection in one model's folder."""
    return int(np.load(folder / file_name(file_key("index", selection)), mmap_mode="r").shape[0])


# --- shards -----------------------------------------------------------------------------------------------
def shard_path(shard_dir: Path, i: int) -> Path:
    return shard_dir / f"shard-{i:05d}.safetensors"


def write_shard(arrays: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """Write one shard atomically: a shard that exists is a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(arrays, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def keep_matching_shards(folder: Path, shard_dir: Path, fingerprint: str) -> None:
    """Drop a finished store and any shards made by other params/weights; keep the rest for resuming."""
    for path in [folder / artifacts.STAMP, folder / "meta.json", *folder.glob("*.npy")]:
        path.unlink(missing_ok=True)  # stamp first: a half-cleared store never looks finished
    if not shard_dir.exists():
        return
    for path in shard_dir.iterdir():
        ok = path.name.endswith(".safetensors") and not path.name.startswith(".")
        if ok:
            with safe_open(str(path), framework="np") as f:
                ok = (f.metadata() or {}).get("fingerprint") == fingerprint
        if not ok:
            path.unlink()


def join_shards(folder: Path, shard_dir: Path, n_shards: int, keys: list[str]) -> None:
    """Concatenate each key over the shards into one .npy, one shard's array in memory at a time."""
    shards = [shard_path(shard_dir, i) for i in range(n_shards)]
    for key in keys:
        shapes, dtype = [], None
        for path in shards:
            with safe_open(str(path), framework="np") as f:
                sl = f.get_slice(key)
                shapes.append(sl.get_shape())
                dtype = sl.get_dtype()
        width = shapes[0][1]
        target = folder / file_name(key)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as out:
            descr = np.lib.format.dtype_to_descr(np.dtype(_SAFETENSORS_DTYPES[dtype]))
            np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False,
                                                       "shape": (sum(s[0] for s in shapes), width)})
            for path in shards:
                with safe_open(str(path), framework="np") as f:
                    out.write(np.ascontiguousarray(f.get_tensor(key)).tobytes())
        os.replace(tmp, target)


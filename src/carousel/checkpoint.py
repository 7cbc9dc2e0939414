"""Checkpoints: one safetensors file holding the tensors, with the JSON (config, vocabulary,
step, data cursor, ...) and a sha256 of the tensors in its header metadata.

Writing is atomic (:func:`carousel.io.atomic_write`), so a kill at any moment leaves either
the previous checkpoint or the new one, never a mix.  Reading never unpickles
anything: safetensors holds raw tensors and the rest is JSON.  A truncated file, a file that
is not a carousel checkpoint, or one whose tensors were changed after writing raises
``ValueError`` with one line saying which.

Any job can use it::

    save_checkpoint(path, {"model.w": w, ...}, {"kind": "lm", "step": 10, ...})
    tensors, meta = load_checkpoint(path)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from carousel.io import atomic_write

FORMAT = "carousel-checkpoint"
VERSION = 1


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> None:
    """Atomically write ``tensors`` and the JSON-ready ``meta`` to ``path``."""
    flat, seen = {}, set()
    for k, v in tensors.items():
        t = v.detach().cpu().contiguous()
        if t.numel() and t.data_ptr() in seen:  # tied weights: safetensors wants one owner
            t = t.clone()
        seen.add(t.data_ptr())
        flat[k] = t
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "json": json.dumps(meta, sort_keys=True),
        "sha256": tensors_digest(flat),
    }
    atomic_write(path, st_save(flat, metadata=header))


def load_checkpoint(
    path: str | os.PathLike, kind: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and JSON metadata of a checkpoint written by :func:`save_checkpoint`.

    Raises ``ValueError`` (one line) for a missing, truncated, foreign or tampered file, or,
    with ``kind``, for a checkpoint whose metadata names another job.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or foreign: {first})"
        ) from err
    header_len = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as err:
        raise ValueError(f"{path} has an unreadable header") from err
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a carousel checkpoint")
    if meta.get("version") != str(VERSION):
        raise ValueError(
            f"{path} is a carousel checkpoint of version {meta.get('version')}; "
            f"this carousel reads version {VERSION}"
        )
    if tensors_digest(tensors) != meta.get("sha256"):
        raise ValueError(f"{path} was modified after it was written (its sha256 does not match)")
    try:
        info = json.loads(meta["json"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path} has no readable JSON metadata") from err
    if kind is not None and info.get("kind") != kind:
        raise ValueError(
            f"{path} is a carousel checkpoint of a {info.get('kind')!r} job, not {kind}"
        )
    return tensors, info


def flatten_state(prefix: str, obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Split a nested state (dicts, lists, tensors, scalars), such as an optimizer's
    ``state_dict()``, into tensors stored under ``prefix.path`` keys and a JSON-ready rest
    in which each tensor is replaced by ``{"__tensor__": key}``."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        keys = list(obj)
        return {
            "__dict__": [
                [_json_key(k), flatten_state(f"{prefix}.{i}", obj[k], tensors)]
                for i, k in enumerate(keys)
            ]
        }
    if isinstance(obj, list | tuple):
        return {
            "__list__": [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)],
            "tuple": isinstance(obj, tuple),
        }
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _json_key(key: Any) -> Any:
    if isinstance(key, bool | int | str):
        return key
    raise TypeError(f"cannot store a {type(key).__name__} key in a checkpoint")


def unflatten_state(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    """The inverse of :func:`flatten_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: unflatten_state(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [unflatten_state(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
        raise ValueError("checkpoint JSON holds an unknown structure")
    return obj

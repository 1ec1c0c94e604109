"""On-disk cache of frozen features, so that probing a checkpoint again does not run its encoder again.

An entry is one split's pooled features (or last-layer tokens) for one key: the encoder's content hash
(:func:`encoder_hash`), the resolved data section (which fixes the evaluation transform and resolution), the
split, the item cap, what was extracted (``pooled:last``, ``pooled:last4``, ``tokens:last``) and
:data:`FEATURE_FORMAT`. Files are ``<root>/<sha256 of the key>.pt``, written atomically (temporary file, fsync,
rename), read with ``torch.load(weights_only=True)``, both through :mod:`jepaflow.checkpoints`; an unreadable or mismatching file is recomputed and
overwritten, never fatal.

The root is, first found: the ``root`` argument (``jepaflow probe --cache DIR``), the environment variable
``JEPAFLOW_CACHE``, ``~/.cache/jepaflow/features``. ``JEPAFLOW_CACHE=off`` (or ``--no-cache``) disables it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jepaflow.checkpoints import read_checkpoint, write_checkpoint
from jepaflow.errors import CheckpointError

#: bump when what is stored under a key changes (pooling, precision, layout)
FEATURE_FORMAT = 1
ENV_VAR = "JEPAFLOW_CACHE"
DEFAULT_ROOT = Path("~/.cache/jepaflow/features")
_OFF = {"off", "0", "false", "no", "none"}


def encoder_hash(encoder: nn.Module) -> str:
    """``sha256:<hex>`` of what determines the encoder's outputs: its class, its plugin config when it has one,
    and every state-dict entry (name, dtype, shape, bytes). Equal for the in-memory encoder at the end of a run
    and the one loaded back from its checkpoint."""
    h = hashlib.sha256()
    h.update(f"{type(encoder).__module__}.{type(encoder).__qualname__}\n".encode())
    config = getattr(encoder, "config", None)
    if hasattr(config, "model_dump"):  # a `checkpoint` field names weights to start from: the state dict has them
        h.update(json.dumps(config.model_dump(mode="json", exclude={"checkpoint"}), sort_keys=True).encode())
    for name, tensor in encoder.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"\n{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{h.hexdigest()}"


def cache_root(root: str | Path | None = None) -> Path | None:
    """The cache folder (module docstring), or None when caching is off."""
    value = str(root) if root is not None else os.environ.get(ENV_VAR)
    if value is not None and value.strip().lower() in _OFF:
        return None
    return Path(value or DEFAULT_ROOT).expanduser()


class FeatureCache:
    """Get/put tensors by key in a folder (module docstring). ``FeatureCache(None)`` caches nothing."""

    def __init__(self, root: Path | None):
        self.root = root
        self.hits: list[str] = []  # descriptions of the entries read back (for reports and tests)

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        """sha256 hex of the canonical JSON of ``parts`` (plus :data:`FEATURE_FORMAT`)."""
        text = json.dumps({"format": FEATURE_FORMAT, **parts}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / f"{key}.pt"

    def get(self, key: str, expected: tuple[str, ...]) -> dict[str, Tensor] | None:
        """The tensors stored under ``key`` if the entry exists, reads back and holds every name in ``expected``;
        otherwise None (a damaged entry is reported with a warning, then recomputed by the caller)."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = read_checkpoint(path, "cpu", "feature cache entry")
            if not isinstance(entry, dict) or entry.get("key") != key:
                raise ValueError("the file does not hold this key's entry")
            tensors = entry["tensors"]
            missing = [name for name in expected if not isinstance(tensors.get(name), Tensor)]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except Exception as exc:
            warnings.warn(f"feature cache entry {path} is unreadable ({type(exc).__name__}: {exc}); recomputing it",
                          RuntimeWarning, stacklevel=2)
            return None
        self.hits.append(str(path))
        return tensors

    def put(self, key: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Store ``tensors`` (moved to the CPU) under ``key``, atomically. A failure to write (full disk,
        read-only folder) is a warning: the probe goes on without the cache."""
        path = self.path(key)
        if path is None:
            return
        try:
            write_checkpoint({"key": key, "meta": json.loads(json.dumps(meta, default=str)),
                         "tensors": {k: v.detach().to("cpu") for k, v in tensors.items()}}, path)
        except (OSError, CheckpointError) as exc:
            warnings.warn(f"cannot write the feature cache entry {path} ({exc}); continuing without it",
                          RuntimeWarning, stacklevel=2)


__all__ = ["DEFAULT_ROOT", "ENV_VAR", "FEATURE_FORMAT", "FeatureCache", "cache_root", "encoder_hash"]

"""Reading and writing checkpoint files: the one place jepaflow touches them.

The engine (``--resume``), :func:`jepaflow.load_encoder` and every plugin that reads weights (the timm encoders'
``checkpoint`` field) go through :func:`read_checkpoint`, which unpickles with ``torch.load(weights_only=True)``
and nothing else: tensors, numbers, strings and containers come back; a file asking for any other Python object
is refused, never executed. Checkpoints downloaded from strangers are therefore safe to open. jepaflow's own
checkpoints hold only such values (``write_checkpoint`` checks it before writing), so they need nothing more.

A jepaflow training checkpoint is a dict::

    format: "jepaflow-checkpoint", version: 1
    recipe: the resolved recipe (Recipe.to_dict()), enough to rebuild every module
    objective: the objective's state_dict (encoder, predictor, target encoder, ...)
    optimizer: the optimizer's state_dict
    step: optimizer steps taken; epoch: step // steps_per_epoch
    rng: {"torch": CPU generator state (uint8 tensor), "cuda": [one per device]}

Writes are atomic (temp file in the same folder, fsync, rename): a crash or a full disk mid-write leaves the
previous checkpoint in place. The trainer checks the weights for NaN/inf on their device before every write
(:func:`nonfinite_count`: fused per-tensor norms, one host sync).

This module imports torch but not the engine, so plugins may use it.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jepaflow.errors import CheckpointError, clip, short

#: ``format`` value of the checkpoints written by jepaflow's engine
FORMAT = "jepaflow-checkpoint"
VERSION = 1

#: prefixes added by wrappers (DistributedDataParallel, torch.compile) that are not part of the model
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

#: state-dict key suffix of a module's non-tensor extra state (``nn.Module.get_extra_state``)
EXTRA_STATE_SUFFIX = "_extra_state"

#: values a checkpoint written by jepaflow may hold: what ``torch.load(weights_only=True)`` gives back
_PLAIN = (str, int, float, bool, type(None), bytes, torch.Size, torch.dtype, torch.device)


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def check_readable_file(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """``path`` as a Path if it names a regular, readable file; else a :class:`CheckpointError` saying why.

    A FIFO or device would block or stream forever, so only regular files are accepted."""
    text = os.fspath(path)
    if "\0" in text:
        raise CheckpointError(f"the {what} path contains a NUL byte ({short(text)})", "check the path")
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise CheckpointError(f"no {what} at {clip(text, 300)}", "check the path") from None
    except OSError as exc:
        raise CheckpointError(f"cannot open the {what} {clip(text, 300)}: {exc.strerror or exc}",
                              "check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"the {what} {clip(text, 300)} is a folder", "pass the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"the {what} {clip(text, 300)} is not a regular file (a pipe, socket or device)",
                              "pass a checkpoint file")
    if not os.access(text, os.R_OK):
        raise CheckpointError(f"the {what} {clip(text, 300)} is not readable (permission denied)",
                              "check its permissions")
    return Path(text)


def check_map_location(map_location: Any) -> Any:
    """``map_location`` as :func:`torch.load` takes it; a device that does not exist here is an error now,
    rather than a confusing failure halfway through unpickling."""
    if not isinstance(map_location, (str, torch.device)):
        return map_location  # a dict or a function: torch's own business
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError, ValueError):
        raise CheckpointError(f"map_location={short(map_location)} is not a device",
                              "pass a device such as 'cpu' or 'cuda:0'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(f"map_location={short(map_location)} asks for CUDA, but no CUDA device is visible",
                                  "load with map_location='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CheckpointError(f"map_location={short(map_location)}: there are only "
                                  f"{torch.cuda.device_count()} CUDA device(s)", "pick an existing device")
    elif device.type not in ("cpu", "meta") and not _backend_available(device.type):
        raise CheckpointError(f"map_location={short(map_location)}: no {device.type} device is available here",
                              "load with map_location='cpu'")
    return map_location


def _backend_available(kind: str) -> bool:
    module = getattr(torch, kind, None)
    available = getattr(module, "is_available", None)
    return bool(available()) if callable(available) else False


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", what: str = "checkpoint", *,
                    mmap: bool = False) -> Any:
    """The object saved in ``path`` by :func:`torch.save`, unpickled with ``weights_only=True`` only (``mmap``:
    tensors are memory-mapped, read from disk only where used).

    Raises:
        CheckpointError: missing, not a regular file, unreadable, damaged or truncated, holding Python objects
            other than tensors/numbers/strings/containers (refused, never run), or a ``map_location`` that does
            not exist here. The message names the file and the fix.
    """
    file = check_readable_file(path, what)
    map_location = check_map_location(map_location)
    if file.stat().st_size == 0:
        raise CheckpointError(f"the {what} {clip(str(file), 300)} is empty (0 bytes)",
                              "the write was interrupted; use an earlier copy, or re-download / re-copy it")
    try:
        return torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        raise _unreadable(file, exc, what) from None


def _unreadable(path: Path, exc: Exception, what: str) -> CheckpointError:
    text = str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # The restricted unpickler names the global it refused ("Unsupported global: GLOBAL numpy...", "Trying to
    # load unsupported GLOBAL posix.system ..."), inside paragraphs of advice: keep only that line.
    refusal = next((line for line in lines if "GLOBAL" in line), None)
    refused = refusal is not None
    if refusal is not None:
        detail = clip(refusal.split("WeightsUnpickler error:")[-1].split(". Please use")[0].strip(), 200)
    else:
        reason = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
        first = [line.strip() for line in reason.strip().splitlines() if line.strip()]
        detail = clip(first[0], 200) if first else ""
    if refused:
        return CheckpointError(
            f"{clip(str(path), 300)} holds Python objects besides tensors, numbers and text ({detail}); jepaflow "
            "never unpickles those, since unpickling can run any code",
            "if you trust the file, re-save only its tensors, e.g. ckpt = torch.load(path, weights_only=False); "
            "torch.save({k: ckpt[k] for k in ('encoder', 'target_encoder')}, 'weights.pth'), and load that",
        )
    return CheckpointError(
        f"cannot read the {what} {clip(str(path), 300)} ({type(exc).__name__}: {detail})",
        "the file is damaged or truncated, or not written by torch.save: use an earlier copy, or re-download / "
        "re-copy it",
    )


def strip_wrapper_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state_dict`` without the ``module.`` (DistributedDataParallel) and ``_orig_mod.``
    (torch.compile) key prefixes, nested in any order, that *every* key shares.

    The renaming is torch's ``consume_prefix_in_state_dict_if_present``; the every-key condition is kept because
    that function also renames a lone key that happens to start with ``module.`` (a submodule of that name)."""
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    state = dict(state_dict)
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(isinstance(k, str) and k.startswith(p) for k in state)),
                      None)
        if prefix is None:
            break
        consume_prefix_in_state_dict_if_present(state, prefix)
    return state


def read_state_dict(path: str | os.PathLike, what: str = "weight file",
                    unwrap: tuple[str, ...] = ("state_dict", "model")) -> dict[str, Tensor]:
    """A dict of tensors from a ``.safetensors`` file or a ``torch.save`` file (unwrapping the ``unwrap``
    keys, stripping wrapper prefixes), for plugins that start from pretrained weights. Non-finite weights are
    refused."""
    file = check_readable_file(path, what)
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            state: Any = load_file(str(file), device="cpu")
        except ImportError:
            raise CheckpointError(f"{file} is a .safetensors file but the safetensors package is not installed",
                                  "pip install safetensors") from None
        except Exception as exc:
            raise _unreadable(file, exc, what) from None
    else:
        state = read_checkpoint(file, "cpu", what)
    for key in unwrap:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{file} does not hold a state dict (found {describe(state)})",
                              "pass a file of weights: a dict of tensors")
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{file}: entries that are not tensors: {short(not_tensors[:5])}",
                              "pass a file of weights: a dict of tensors")
    state = strip_wrapper_prefixes(dict(state))
    check_finite(state, str(file))
    return state


def describe(obj: Any) -> str:
    """A short description of an unpickled object, for messages."""
    if isinstance(obj, dict):
        keys = list(obj)[:8]
        more = ", ..." if len(obj) > 8 else ""
        return f"a dict with keys {short(keys, 200)[1:-1]}{more}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


def load_state_dict_checked(module: torch.nn.Module, state: dict[str, Any], source: str) -> None:
    """``module.load_state_dict(state, strict=True)``, with a :class:`JepaflowError` that lists the missing,
    unexpected and mis-shaped entries (a few of each) instead of torch's RuntimeError."""
    check_state_matches(module, state, source)
    module.load_state_dict(state, strict=True)


def check_state_matches(module: torch.nn.Module, state: dict[str, Any], source: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [clip(str(k), 60) for k in state if k not in expected]
    wrong = [  # non-tensor extra state (a module's get_extra_state, e.g. a step counter) has no shape
        f"{k}: {tuple(getattr(state[k], 'shape', ()))} in the file, {tuple(getattr(v, 'shape', ()))} expected"
        for k, v in expected.items()
        if k in state and getattr(state[k], "shape", None) != getattr(v, "shape", None)
    ]
    if missing or unexpected or wrong:

        def show(items: list[str]) -> str:
            return ", ".join(clip(str(i), 120) for i in items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")

        parts = [
            f"{label}: {show(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if items
        ]
        raise CheckpointError(
            f"{clip(source, 300)} does not match a {type(module).__name__}: " + clip("; ".join(parts), 1500),
            "check that the file is the checkpoint you meant (an I-JEPA ViT checkpoint, or a jepaflow checkpoint "
            "written by this version); for official checkpoints of other widths pass num_heads=",
        )


# ----------------------------------------------------------------------------------------------------------------
# Finite weights
# ----------------------------------------------------------------------------------------------------------------


def _float_tensors(tensors: Iterable[Any]) -> list[Tensor]:
    return [t for t in tensors if isinstance(t, Tensor) and t.is_floating_point() and t.numel() > 0
            and t.device.type != "meta"]


def _norms(floats: list[Tensor]) -> list[tuple[list[int], Tensor]]:
    """Per-tensor 2-norms as ``(positions in floats, norms)``, one fused ``torch._foreach_norm`` per device and
    dtype (float16 accumulated in float32, whose range it would otherwise overflow). The 2-norm is the fused
    path that is fast on CPU too (the max-norm falls back to one kernel per tensor there: 40x slower for ViT-B)."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(floats):
        groups.setdefault((t.device, t.dtype), []).append(i)
    out = []
    for (_, dtype), positions in groups.items():
        extra = {"dtype": torch.float32} if dtype == torch.float16 else {}
        norms = torch.stack(torch._foreach_norm([floats[i].detach() for i in positions], 2, **extra))
        out.append((positions, norms))
    return out


def nonfinite_count(tensors: Iterable[Any]) -> Tensor:
    """How many of ``tensors`` hold a NaN or an infinity, as a 0-d tensor on their device (no host sync).

    A tensor's 2-norm is NaN or inf when one of its entries is, and otherwise only when its values are so large
    that their squares overflow float32 (entries of 1e15 and more): the weights of a diverged run either way.
    :func:`nonfinite_names` tells the two apart exactly."""
    floats = _float_tensors(tensors)
    if not floats:
        return torch.zeros((), dtype=torch.int64)
    first = floats[0].device
    count = torch.zeros((), dtype=torch.int64, device=first)
    for _, norms in _norms(floats):
        count = count + (~torch.isfinite(norms)).sum().to(first)
    return count


def nonfinite_names(state: Mapping[str, Any], limit: int = 5) -> tuple[int, list[str]]:
    """``(count, first names)`` of the floating-point tensors of ``state`` holding NaN or inf, exactly: the fused
    norms find the candidates (one host sync), each candidate is then checked entry by entry."""
    names = [k for k, v in state.items() if _float_tensors([v])]
    floats = [state[k] for k in names]
    suspects: list[int] = []
    for positions, norms in _norms(floats):
        suspects += [positions[i] for i in (~torch.isfinite(norms)).nonzero().flatten().tolist()]
    bad = [names[i] for i in sorted(suspects) if not bool(torch.isfinite(floats[i]).all())]
    return len(bad), bad[:limit]


def check_finite(state: Mapping[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` if a floating-point tensor of ``state`` holds NaN or inf."""
    count, names = nonfinite_names(state)
    if count:
        raise CheckpointError(
            f"{clip(source, 300)} has {count} tensor(s) with NaN or infinite values (e.g. {', '.join(names)}): "
            "the weights of a diverged run",
            "use a checkpoint from before the divergence",
        )


# ----------------------------------------------------------------------------------------------------------------
# Training checkpoints (resume)
# ----------------------------------------------------------------------------------------------------------------


def check_training_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``ckpt`` if it has every entry a resume needs, of the right type; else one :class:`CheckpointError`
    naming what is missing or wrong."""
    where = clip(os.fspath(path), 300)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a jepaflow checkpoint (found {describe(ckpt)})",
                              "pass a run folder written by `jepaflow run`, or its checkpoints/last.pt")
    problems = []
    for key, kind in (("recipe", dict), ("objective", dict), ("optimizer", dict), ("rng", dict)):
        if key not in ckpt:
            problems.append(f"no {key!r} entry")
        elif not isinstance(ckpt[key], kind):
            problems.append(f"{key!r} is {describe(ckpt[key])}, not a mapping")
    step = ckpt.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        problems.append(f"'step' is {short(step)}, not a whole number")
    elif step < 0:
        problems.append(f"'step' is {step}, below 0")
    rng = ckpt.get("rng")
    if isinstance(rng, dict):
        gen = rng.get("torch")
        if not (isinstance(gen, Tensor) and gen.dtype == torch.uint8 and gen.dim() == 1):
            problems.append("'rng' has no torch generator state (a 1-D uint8 tensor under 'torch')")
        elif gen.numel() != torch.get_rng_state().numel():
            problems.append(f"'rng' torch generator state has {gen.numel()} bytes, "
                            f"{torch.get_rng_state().numel()} expected")
    optimizer = ckpt.get("optimizer")
    if isinstance(optimizer, dict) and not (isinstance(optimizer.get("state"), dict)
                                             and isinstance(optimizer.get("param_groups"), list)):
        problems.append("'optimizer' is not an optimizer state_dict (no 'state' / 'param_groups')")
    if isinstance(ckpt.get("objective"), dict):
        not_tensors = [k for k, v in ckpt["objective"].items()
                       if not isinstance(v, Tensor) and not str(k).endswith(EXTRA_STATE_SUFFIX)]
        if not_tensors:
            problems.append(f"'objective' has entries that are not tensors: {short(not_tensors[:3])}")
    if problems:
        raise CheckpointError(f"{where} is damaged: {'; '.join(problems)}",
                              "resume from an intact checkpoint (e.g. a keep_epoch_checkpoints copy), or start "
                              "a new run")
    return ckpt


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` if ``obj`` holds a value that ``torch.load(weights_only=True)`` would refuse
    (numpy arrays, custom classes, ...): such a file could not be read back safely. Walks containers only."""
    stack: list[tuple[Any, str]] = [(obj, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Tensor):
            if type(value) is not Tensor and not isinstance(value, torch.nn.Parameter):
                raise CheckpointError(f"{path} is a {type(value).__name__} (a tensor subclass)",
                                      "store plain tensors in checkpoints")
            continue
        if isinstance(value, _PLAIN):
            continue
        if type(value) in (dict, OrderedDict, list, tuple, set):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(value, dict) and not isinstance(key, _PLAIN):
                    raise CheckpointError(f"{path} has a key of type {type(key).__name__}",
                                          "keys of a checkpoint are text or numbers")
                stack.append((item, f"{path}[{short(key, 40)}]"))
            continue
        raise CheckpointError(
            f"{path} is a {type(value).__module__}.{type(value).__qualname__}: a checkpoint written by jepaflow may "
            "hold only tensors, numbers, text and lists/dicts of them, so that it loads with weights_only=True",
            "convert it (e.g. torch.from_numpy(array), or a dict of its fields) in the state_dict of the plugin "
            "that returns it",
        )


#: errno values that mean the storage, not the program, failed
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EFBIG: "the file is larger than allowed here", errno.EIO: "an input/output error",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}


def write_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically: written to a temp file in the same folder, flushed to disk,
    then renamed over ``path``. If anything fails (a full disk, a quota, a kill), ``path`` keeps its previous
    content and the temp file is removed; storage failures raise a :class:`CheckpointError`."""
    path = Path(path)
    check_plain(obj)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:
        reason = _storage_reason(exc)
        if reason is None:
            raise
        kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} exists"
        raise CheckpointError(f"could not write the checkpoint {clip(str(path), 300)}: {reason}; {kept}",
                              "free space (or point the run folder to a larger disk), then continue with --resume"
                              ) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _storage_reason(exc: BaseException) -> str | None:
    """Why a write failed, when the storage is the cause (torch's zip writer reports a failed ``write`` as a
    RuntimeError "[enforce fail at inline_container.cc] ... file write failed"); None for anything else."""
    if isinstance(exc, OSError):
        return _STORAGE_ERRNOS.get(exc.errno or -1, exc.strerror or str(exc))
    text = str(exc)
    if "inline_container" in text or "file write failed" in text or "unexpected pos" in text:
        return "the write failed (a full disk or quota?)"
    return None


def _fsync_dir(folder: Path) -> None:
    # the rename itself must reach the disk, or a power cut could bring back the old name
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "FORMAT",
    "VERSION",
    "WRAPPER_PREFIXES",
    "check_finite",
    "check_map_location",
    "check_plain",
    "check_readable_file",
    "check_state_matches",
    "check_training_checkpoint",
    "describe",
    "load_state_dict_checked",
    "nonfinite_count",
    "nonfinite_names",
    "read_checkpoint",
    "read_state_dict",
    "strip_wrapper_prefixes",
    "write_checkpoint",
]

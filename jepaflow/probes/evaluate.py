"""The probe protocol end to end: features (cached), the validation split, every probe, and ``probe.json``.

:func:`probe_encoder` is what both the end-of-run probe (``jepaflow.engine.trainer.run_probe``) and
``jepaflow probe`` call, so that a run's own probe and a later probe of its checkpoint are the same code and,
with the same settings, the same numbers. :func:`evaluate_features` runs the probes on given features.
The result is the ``probe.json`` document (schema :data:`SCHEMA`, version :data:`SCHEMA_VERSION`), described
field by field in docs/probes.md.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jepaflow.config import ProbeConfig
from jepaflow.errors import JepaflowError
from jepaflow.interfaces import Encoder, Objective
from jepaflow.probes.cache import FeatureCache, encoder_hash
from jepaflow.probes.data import ProbeData
from jepaflow.probes.features import SplitFeatures, check_layers, extract_features
from jepaflow.probes.knn import knn_accuracy
from jepaflow.probes.linear import accuracy, feature_statistics, select_and_fit
from jepaflow.probes.splits import validation_split

SCHEMA = "jepaflow-probe"
SCHEMA_VERSION = 1
#: ProbeConfig fields that do not change any number (excluded from ``settings`` in probe.json): whether the
#: end-of-run probe runs, whether a baseline is added beside it, and the extraction batch size (recorded under
#: ``environment``; the feature cache does not key on it either)
NOT_SETTINGS = ("enabled", "random_init_baseline", "batch_size")


def probe_settings(cfg: ProbeConfig) -> dict[str, Any]:
    """The resolved settings recorded in probe.json (and compared by ``jepaflow compare``)."""
    return cfg.model_dump(mode="json", exclude=set(NOT_SETTINGS))


def _feature_kinds(cfg: ProbeConfig, has_tokens: bool) -> tuple[bool, bool]:
    """``(pooled, tokens)``: which features the probes of ``cfg`` read."""
    pooled = any(k in cfg.kinds for k in ("knn", "linear", "lowshot"))
    tokens = "attentive" in cfg.kinds and has_tokens
    return pooled, tokens


def pick_encoder(objective: Objective, role: str | None, what: str) -> tuple[Encoder, str]:
    """``(encoder, role name)``: ``encoders()[role]``, or the representation encoder (and its role's name)."""
    roles = objective.encoders()
    if role is None:
        encoder = objective.representation_encoder()
        name = next((k for k, v in roles.items() if v is encoder), "representation")
        return encoder, name
    if role not in roles:
        raise JepaflowError(f"the {type(objective).__name__} of {what} has no encoder {role!r}",
                            f"use probe.encoder (--encoder) one of: {', '.join(roles)}")
    return roles[role], role


def load_or_extract(
    encoder: nn.Module, data: ProbeData, cfg: ProbeConfig, content_hash: str, device: torch.device,
    cache: FeatureCache | None, pooled: bool, tokens: bool, log: Callable[[str], None], role: str | None = None,
) -> tuple[SplitFeatures, SplitFeatures, dict[str, str], float]:
    """Both splits' features from the cache, or from the encoder (then stored). The cache key: the encoder's
    content hash and ``role``, the resolved data section (which fixes the evaluation transform), the split, the
    item cap, what is extracted and the jepaflow version (docs/probes.md). Returns ``(train, test,
    {"train": "hit"|"miss", "test": ...}, seconds spent extracting)``."""
    from jepaflow import __version__

    cache = cache or FeatureCache(None)
    out: list[SplitFeatures] = []
    status: dict[str, str] = {}
    seconds = 0.0
    for split, dataset, cap in (("train", data.train, cfg.train_samples), ("test", data.test, cfg.test_samples)):
        base = {"encoder": content_hash, "role": role, "data": data.section, "split": split, "max_items": cap,
                "jepaflow": __version__}
        wanted = {}
        if pooled:
            wanted["pooled"] = cache.key({**base, "what": f"pooled:{cfg.layers}"})
        if tokens:
            wanted["tokens"] = cache.key({**base, "what": "tokens:last"})
        found: dict[str, Tensor] = {}
        labels: Tensor | None = None
        for what, key in wanted.items():
            entry = cache.get(key, expected=(what, "labels"))
            if entry is not None:
                found[what], labels = entry[what], entry["labels"]
        missing = [w for w in wanted if w not in found]
        if "tokens" in missing:
            check_token_memory(encoder, min(len(dataset), cap or len(dataset)), split)
        if missing:
            t0 = time.perf_counter()
            log(f"features: {split} split, {', '.join(missing)} ({len(dataset)} images"
                + (f", capped at {cap}" if cap else "") + ")")
            feats = extract_features(encoder, dataset, cfg.batch_size, device, cap, cfg.layers,
                                     pooled="pooled" in missing, tokens="tokens" in missing)
            seconds += time.perf_counter() - t0
            labels = feats.labels
            for what in missing:
                found[what] = getattr(feats, what)
                cache.put(wanted[what], {what: found[what], "labels": labels},
                          {**base, "what": what, "layers": cfg.layers})
        status[split] = "miss" if missing else "hit"
        out.append(SplitFeatures(labels, found.get("pooled"), found.get("tokens")))
    return out[0], out[1], status, seconds


def check_token_memory(encoder: nn.Module, num_items: int, split: str) -> None:
    """Refuse, before extracting, token sets that cannot fit: the attentive probe holds a split's float16 tokens
    ``(N, T, D)`` in host memory (and on the probe's device). More than half the machine's memory is refused
    with the fix (a cap on the items); unknown sizes pass."""
    tokens, dim = getattr(encoder, "num_patches", None), getattr(encoder, "embed_dim", None)
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return
    if not isinstance(tokens, int) or not isinstance(dim, int):
        return
    need = num_items * tokens * dim * 2
    if need > total // 2:
        from jepaflow.errors import JepaflowError

        raise JepaflowError(
            f"the attentive probe needs the {split} split's tokens in memory: {num_items} x {tokens} x {dim} "
            f"float16 = {need / 2**30:.1f} GiB, more than half of this machine's {total / 2**30:.0f} GiB",
            "cap the images with probe.train_samples / probe.test_samples, or leave attentive out of probe.kinds",
        )


def evaluate_features(
    train: SplitFeatures, test: SplitFeatures, cfg: ProbeConfig, num_classes: int,
    device: torch.device | str = "cpu", num_heads: int | None = None, log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the probes of ``cfg.kinds`` (docs/probes.md) on given features; returns ``{"splits": sizes,
    "probes": {kind: result}, "skipped": {kind: reason}}``. Hyper-parameters are chosen on a validation split of
    the train features; the test split is read once per probe, by the final model."""
    from jepaflow.probes.attentive import normalize_tokens, predict_attentive, select_and_train
    from jepaflow.probes.lowshot import run_lowshot

    device = torch.device(device)
    train_y, test_y = train.labels.to(device), test.labels.to(device)
    fit_np, val_np = validation_split(train.labels.numpy(), cfg.val_fraction, cfg.seed)
    fit_idx, val_idx = torch.as_tensor(fit_np, device=device), torch.as_tensor(val_np, device=device)
    splits = {"train": len(train_y), "fit": len(fit_np), "val": len(val_np), "test": len(test_y)}
    probes: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    train_x = test_x = None
    if train.pooled is not None and any(k in cfg.kinds for k in ("linear", "lowshot")):
        mean, std = feature_statistics(train.pooled.to(device))  # train-split statistics, no labels involved
        train_x = (train.pooled.to(device) - mean) / std
        test_x = (test.pooled.to(device) - mean) / std

    for kind in cfg.kinds:
        t0 = time.perf_counter()
        log(f"probe: {kind}")
        if kind == "knn":
            acc = knn_accuracy(train.pooled.to(device), train_y, test.pooled.to(device), test_y,
                               k=cfg.knn_k, temperature=cfg.knn_temperature, num_classes=num_classes)
            probes[kind] = {"accuracy": acc, "hyperparameters": {"k": cfg.knn_k, "temperature": cfg.knn_temperature},
                            "val_accuracy": None}
        elif kind == "linear":
            sel = select_and_fit(train_x, train_y, fit_idx, val_idx, num_classes, cfg.linear_C,
                                 cfg.linear_max_iter, cfg.linear_tol, log=log)
            probes[kind] = {
                "accuracy": accuracy(sel.fit.predict(test_x), test_y),
                "hyperparameters": {"C": sel.C},
                "val_accuracy": sel.val_accuracy,
                "grid": {"C": [float(c) for c in cfg.linear_C]},
                "val_accuracies": {f"C={c:g}": a for c, a in sel.val_accuracies.items()},
                "solver": sel.solver,
            }
        elif kind == "attentive":
            if train.tokens is None:
                skipped[kind] = "this source has no patch tokens (raw pixels)"
                continue
            heads = cfg.attentive_heads or num_heads or 1
            tokens_hat = normalize_tokens(train.tokens.to(device))
            sel = select_and_train(tokens_hat, train_y, fit_idx, val_idx, num_classes, heads, cfg.attentive_lr,
                                   cfg.attentive_weight_decay, cfg.attentive_epochs, cfg.attentive_batch_size,
                                   cfg.seed)
            del tokens_hat
            preds = predict_attentive(sel.model, normalize_tokens(test.tokens.to(device)))
            probes[kind] = {
                "accuracy": accuracy(preds, test_y),
                "hyperparameters": {"lr": sel.lr, "weight_decay": sel.weight_decay, "heads": heads,
                                    "epochs": cfg.attentive_epochs, "batch_size": cfg.attentive_batch_size},
                "val_accuracy": sel.val_accuracy,
                "grid": {"lr": [float(v) for v in cfg.attentive_lr],
                         "weight_decay": [float(v) for v in cfg.attentive_weight_decay]},
                "val_accuracies": sel.val_accuracies,
            }
        elif kind == "lowshot":
            settings = run_lowshot(train_x, train_y, fit_np, val_np, test_x, test_y, num_classes,
                                   cfg.lowshot_per_class, cfg.lowshot_fractions, cfg.lowshot_draws, cfg.seed,
                                   cfg.linear_C, cfg.linear_max_iter, cfg.linear_tol)
            probes[kind] = {"settings": settings, "draws": cfg.lowshot_draws}
        else:  # ProbeConfig validates kinds; this guards a config built without validation
            raise ValueError(f"unknown probe kind {kind!r}")
        probes[kind]["seconds"] = round(time.perf_counter() - t0, 3)
    return {"splits": splits, "probes": probes, "skipped": skipped}


def probe_encoder(
    encoder: nn.Module,
    data: ProbeData,
    cfg: ProbeConfig,
    *,
    source: dict[str, Any],
    device: torch.device | str = "cpu",
    cache: FeatureCache | None = None,
    baseline: nn.Module | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Probe ``encoder`` (already on ``device``) on ``data`` with ``cfg``: the probe.json document.

    Args:
        source: the source description (``kind``, ``path``, ``role``, ...); ``content_hash``, ``layers`` and
            ``feature_dim`` are filled in here.
        cache: where features are looked up and stored (None: nowhere).
        baseline: the same architecture at its initialization; when given, probed the same way and reported
            under ``baselines.random_init``.
    """
    device = torch.device(device)
    t_start = time.perf_counter()
    has_tokens = bool(getattr(encoder, "has_tokens", True))
    result = _probe_one(encoder, data, cfg, dict(source), device, cache, has_tokens, log)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": result.pop("source"),
        "data": {"section": data.section, "num_classes": data.num_classes, "splits": result.pop("splits")},
        "settings": probe_settings(cfg),
        "environment": {**_environment(device), "batch_size": cfg.batch_size},
        **result,
    }
    if baseline is not None:
        log("random-init baseline")
        base_source = {**source, "kind": "random_init", "of": source.get("kind")}
        base = _probe_one(baseline, data, cfg, base_source, device, cache, has_tokens, log)
        base.pop("splits")
        doc["baselines"] = {"random_init": base}
    doc["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    return doc


def _probe_one(encoder: nn.Module, data: ProbeData, cfg: ProbeConfig, source: dict[str, Any],
               device: torch.device, cache: FeatureCache | None, has_tokens: bool,
               log: Callable[[str], None]) -> dict[str, Any]:
    pooled, tokens = _feature_kinds(cfg, has_tokens)
    if pooled:
        check_layers(encoder, cfg.layers)  # before any image is encoded (or any cached entry is read)
    content_hash = source.get("content_hash") or encoder_hash(encoder)
    train, test, status, t_feat = load_or_extract(encoder, data, cfg, content_hash, device, cache, pooled,
                                                  tokens, log, role=source.get("role"))
    evaluated = evaluate_features(train, test, cfg, data.num_classes, device, getattr(encoder, "num_heads", None),
                                  log)
    source.update({
        "content_hash": content_hash,
        "encoder_class": source.get("encoder_class") or type(encoder).__name__,
        "layers": cfg.layers,
        "feature_dim": None if train.pooled is None else int(train.pooled.shape[1]),
        "token_shape": None if train.tokens is None else list(train.tokens.shape[1:]),
    })
    seconds = {"features": round(t_feat, 3)}
    seconds.update({k: v["seconds"] for k, v in evaluated["probes"].items()})
    return {"source": source, "splits": evaluated["splits"], "cache": status, "probes": evaluated["probes"],
            "skipped": evaluated["skipped"], "seconds": seconds}


def _environment(device: torch.device) -> dict[str, Any]:
    from jepaflow import __version__

    env = {"jepaflow": __version__, "torch": torch.__version__, "device": str(device),
           "threads": torch.get_num_threads(), "python": platform.python_version()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def accuracies(doc: dict[str, Any]) -> dict[str, float]:
    """``{"linear": acc, "knn": acc, "attentive": acc, "lowshot:1_per_class": mean, ...}`` of a probe.json
    document (its baselines' with the suffix ``_random_init``)."""
    def flat(probes: dict[str, Any], suffix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, res in probes.items():
            if kind == "lowshot":
                out.update({f"lowshot:{name}{suffix}": s["mean"] for name, s in res["settings"].items()})
            else:
                out[kind + suffix] = res["accuracy"]
        return out

    out = flat(doc["probes"])
    for name, base in doc.get("baselines", {}).items():
        out.update(flat(base["probes"], f"_{name}"))
    return out


def write_probe_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Write a probe.json document atomically (temporary file, then rename); returns the path."""
    import json
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def summary_line(doc: dict[str, Any]) -> str:
    """``"linear 84.12%, knn 83.90% (random init: ...)"``: the headline numbers of a probe.json document."""
    acc = accuracies(doc)
    parts = []
    for key, value in acc.items():
        if key.endswith("_random_init"):
            continue
        text = f"{key} {value * 100:.2f}%"
        if key + "_random_init" in acc:
            text += f" (random init: {acc[key + '_random_init'] * 100:.2f}%)"
        parts.append(text)
    return ", ".join(parts)


__all__ = ["SCHEMA", "SCHEMA_VERSION", "accuracies", "check_token_memory", "evaluate_features", "load_or_extract",
           "pick_encoder", "probe_encoder", "probe_settings", "summary_line", "write_probe_json"]

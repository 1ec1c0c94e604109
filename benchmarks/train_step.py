#!/usr/bin/env python
"""One I-JEPA training step: images/s, peak memory and FLOPs, jepaflow against the official code, side by side.

The step is the whole of I-JEPA's training iteration on a batch already in memory: the target encoder's forward
on the full image (no grad) and layer norm, the context encoder on the context patches, the predictor over every
target block, the smooth-L1 loss, backward, AdamW and the EMA update of the target encoder. jepaflow's side is
the trainer's own :class:`jepaflow.engine.trainer.TrainStep`, built from an in-memory recipe exactly as
``jepaflow run`` builds it, so every recipe switch (``train.fused_optimizer``, ``train.compile``, ...) is timed
as it trains. Mask sampling is timed apart (``masks ms``): in training it runs in the DataLoader workers.

Sides, all in this process and timed in interleaved rounds (side A's steps, then B's, ..., the order rotating
every round), so that a neighbour's load on a shared machine hits every side alike:

* one or more jepaflow **variants**, each a list of recipe overrides (``--variant fused:train.fused_optimizer=true``);
  by default one variant with the recipe defaults;
* with ``--reference PATH``, the **official** code: ``src.models.vision_transformer`` (encoder, predictor),
  ``src.helper.init_opt`` (AdamW param groups, schedulers) and the step of ``src/train.py`` (target forward +
  ``F.layer_norm`` + ``apply_masks``, ``encoder(imgs, masks_enc)``, ``predictor(z, masks_enc, masks_pred)``,
  ``F.smooth_l1_loss``, backward, ``optimizer.step()``, the per-parameter EMA loop, ``float(loss)``), from a
  local checkout of facebookresearch/ijepa. Nothing of it is copied into jepaflow. Its weights are loaded from
  jepaflow's (the parameter names are the same), every step gets the same images and the same masks (sampled by
  the official ``MaskCollator``), so both sides compute the same function: the first step's losses are printed
  side by side as the check;
* with ``--lightly``, lightly's I-JEPA modules (``IJEPAPredictorTIMM`` and a timm ViT through
  ``MaskedVisionTransformerTIMM``) when the ``lightly`` package is installed, in the official step.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during a side's steps; on CPU the resident set's
high-water mark during a side's steps minus the resident set before them, after glibc handed freed memory back
(see ``_common.PeakMemory``): what the step adds at its peak (activations, gradients, temporaries).

FLOPs (``--flops``): ``torch.utils.flop_counter.FlopCounterMode`` over one extra step of each side (matmuls,
convolutions, attention; forward and backward); achieved TFLOP/s = FLOPs / median step time, and MFU = that over
``--peak-tflops`` (default on CUDA: 989, the H100/H200 SXM dense bf16 peak; on CPU: none unless given).

    python benchmarks/train_step.py --width 192 --depth 6 --heads 3 --img 32 --patch 4 --batch 128 \\
        --reference /tmp/ijepa
    python benchmarks/train_step.py --size small --img 224 --patch 16 --batch 16 --reference /tmp/ijepa
    python benchmarks/train_step.py --size base --img 224 --patch 16 --batch 128 --precision bf16 --device cuda \\
        --flops --variant eager: --variant compiled:train.compile=true
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, command_line, emit, import_reference, machine_lines, percentile, sync, table  # noqa: E402

from jepaflow.config import Recipe, load_recipe  # noqa: E402
from jepaflow.encoders.vit import VIT_SIZES  # noqa: E402
from jepaflow.engine.build import build_masker, build_objective  # noqa: E402
from jepaflow.engine.trainer import TrainStep  # noqa: E402
from jepaflow.errors import JepaflowError  # noqa: E402
from jepaflow.interfaces import Batch, MaskBatch  # noqa: E402

#: set by SIGTERM (gpu_suite.py's time limit): finish the current step, then report what was measured
STOP = {"requested": False}

#: schedule length (steps) behind the learning-rate, weight-decay and momentum values; they do not change speed
NOMINAL_SCHEDULE_STEPS = 10_000
#: dense bf16 tensor-core peak of an H100 / H200 SXM (NVIDIA data sheets: 989.4 TFLOP/s without sparsity)
DEFAULT_CUDA_PEAK_TFLOPS = 989.0


# ------------------------------------------------------------------------------------------------ the setup
@dataclass
class Setup:
    """What every side shares: sizes, device, the images and the masks of every step."""

    args: argparse.Namespace
    device: torch.device
    dims: tuple[int, int, int]  # encoder width, depth, heads
    grid: tuple[int, int]
    images: list[torch.Tensor] = field(default_factory=list)  # a few distinct batches, cycled
    masks: list[MaskBatch] = field(default_factory=list)  # per step index
    official_masks: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = field(default_factory=list)

    def batch(self, i: int) -> Batch:
        return Batch(images=self.images[i % len(self.images)], masks=self.masks[i])


def encoder_dims(args: argparse.Namespace) -> tuple[int, int, int]:
    width, depth, heads, _ = VIT_SIZES[args.size]
    return args.width or width, args.depth or depth, args.heads or heads


def recipe_dict(args: argparse.Namespace, dims: tuple[int, int, int]) -> dict[str, Any]:
    """The in-memory recipe of the jepaflow side (the I-JEPA reference values unless the command line says)."""
    width, depth, heads = dims
    return {
        "seed": args.seed,
        "output_dir": "/tmp/jepaflow-bench",
        "data": {"name": "synthetic", "num_train": args.batch, "num_test": args.batch, "image_size": args.img,
                 "channels": 3},
        "encoder": {"name": "vit", "size": args.size, "patch_size": args.patch, "img_size": args.img,
                    "embed_dim": width, "depth": depth, "num_heads": heads},
        "predictor": {"name": "vit_predictor", "embed_dim": args.pred_width, "depth": args.pred_depth},
        "masker": {"name": "multiblock", "mode": args.mask_mode, "min_keep": args.min_keep},
        "target_updater": {"name": "ema"},
        "objective": {"name": "ijepa"},
        "optim": {"epochs": 100, "warmup_epochs": 10},
        "train": {"batch_size": args.batch, "precision": args.precision, "device": args.device,
                  "num_workers": 0, "progress": False},
    }


def make_setup(args: argparse.Namespace, total_steps: int) -> Setup:
    dims = encoder_dims(args)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    side = args.img // args.patch
    setup = Setup(args, device, dims, (side, side))
    g = torch.Generator().manual_seed(args.seed)
    setup.images = [torch.randn(args.batch, 3, args.img, args.img, generator=g).to(device) for _ in range(2)]
    if args.reference:
        from src.masks.multiblock import MaskCollator

        # jepaflow's official-mode check refuses the sizes on which the official collator would loop forever
        official = recipe_dict(args, dims) | {"masker": {"name": "multiblock", "mode": "official",
                                                         "min_keep": args.min_keep}}
        build_masker(load_recipe(official)).check(setup.grid)
        collator = official_collator(MaskCollator, args)
        for _ in range(total_steps):
            _, masks_enc, masks_pred = collator(list(range(args.batch)))
            setup.official_masks.append(([m.to(device) for m in masks_enc], [m.to(device) for m in masks_pred]))
            setup.masks.append(MaskBatch(context=masks_enc[0], targets=torch.stack(masks_pred, dim=1)).to(device))
    else:
        masker = build_masker(load_recipe(recipe_dict(args, dims)))
        masker.check(setup.grid)
        for i in range(total_steps):
            setup.masks.append(masker(args.batch, setup.grid, torch.Generator().manual_seed(i)).to(device))
    return setup


def official_collator(cls: Any, args: argparse.Namespace) -> Any:
    """The official ``MaskCollator`` with the I-JEPA ImageNet values (configs/in1k_vith14_ep300.yaml)."""
    return cls(input_size=(args.img, args.img), patch_size=args.patch, enc_mask_scale=(0.85, 1.0),
               pred_mask_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=args.min_keep,
               allow_overlap=False)


# ------------------------------------------------------------------------------------------------ sides
class Side:
    """One implementation under test: ``step(i)`` runs training step ``i`` and returns the loss tensor;
    ``sample_masks()`` runs the implementation's own mask sampler once on a batch (timed apart)."""

    name: str
    params: int

    def step(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def sample_masks(self) -> None:
        raise NotImplementedError


class JepaflowSide(Side):
    """The trainer's own :class:`TrainStep`, built as ``jepaflow.engine.trainer`` builds it."""

    def __init__(self, name: str, setup: Setup, overrides: list[str]):
        args = setup.args
        self.name, self.setup, self.overrides = name, setup, overrides
        # "bench.sdpa=false": the benchmark's own switch (not a recipe field), attention written out as the
        # reference does instead of torch's scaled_dot_product_attention, to measure what SDPA is worth
        bench = {o.split("=")[0]: o.split("=", 1)[1] for o in overrides if o.startswith("bench.")}
        self.recipe: Recipe = load_recipe(recipe_dict(args, setup.dims),
                                          [o for o in overrides if not o.startswith("bench.")])
        torch.manual_seed(args.seed)
        with setup.device:  # initialized where it runs (a ViT-H initializes slowly on the CPU)
            self.objective = build_objective(self.recipe)
        if bench.get("bench.sdpa", "true").lower() == "false":
            for m in self.objective.modules():
                if hasattr(m, "fused_attn"):
                    m.fused_attn = False  # timm's explicit softmax(q k^T) v path
        spe = max(1, NOMINAL_SCHEDULE_STEPS // self.recipe.optim.epochs)
        self.trainer = TrainStep(self.recipe, self.objective, setup.device, steps_per_epoch=spe)
        self.params = sum(p.numel() for p in self.trainer.params)
        # jepaflow's own sampler in the reference's mode, for the masks column
        self.masker = build_masker(load_recipe(recipe_dict(args, setup.dims) | {
            "masker": {"name": "multiblock", "mode": "official" if args.reference else args.mask_mode,
                       "min_keep": args.min_keep}}))
        self._g = torch.Generator().manual_seed(0)

    def step(self, i: int) -> torch.Tensor:
        self.trainer.step([self.setup.batch(i)])
        loss = self.trainer.win_sums["loss"]
        self.trainer.win_sums = {}  # the loop reads and clears them every log_every steps
        return loss

    def sample_masks(self) -> None:
        self.masker(self.setup.args.batch, self.setup.grid, self._g)


class OfficialStepSide(Side):
    """The official training iteration (``src/train.py``: ``train_step``) around an encoder and a predictor that
    take the official calling convention (``encoder(imgs, masks)``, ``predictor(z, masks_x, masks)``)."""

    def __init__(self, name: str, setup: Setup, encoder: torch.nn.Module, predictor: torch.nn.Module):
        from src.helper import init_opt
        from src.masks.multiblock import MaskCollator

        args, dev = setup.args, setup.device
        self.name, self.setup = name, setup
        self.encoder, self.predictor = encoder.to(dev), predictor.to(dev)
        self.target_encoder = copy.deepcopy(self.encoder)  # as src/train.py
        for p in self.target_encoder.parameters():
            p.requires_grad = False
        bf16 = args.precision == "bf16"
        spe = max(1, NOMINAL_SCHEDULE_STEPS // 100)
        self.optimizer, self.scaler, self.scheduler, self.wd_scheduler = init_opt(
            encoder=self.encoder, predictor=self.predictor, wd=0.04, final_wd=0.4, start_lr=2e-4, ref_lr=1e-3,
            final_lr=1e-6, iterations_per_epoch=spe, warmup=10, num_epochs=100, ipe_scale=1.0,
            use_bfloat16=bf16 and dev.type == "cuda")
        total = spe * 100
        self.momentum = (0.996 + i * (1.0 - 0.996) / total for i in range(total + 1))
        self.autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else None
        self.params = sum(p.numel() for p in [*self.encoder.parameters(), *self.predictor.parameters()]
                          if p.requires_grad)
        self.collator = official_collator(MaskCollator, args)

    def step(self, i: int) -> torch.Tensor:
        from src.masks.utils import apply_masks
        from src.utils.tensors import repeat_interleave_batch

        imgs = self.setup.images[i % len(self.setup.images)]
        masks_enc, masks_pred = self.setup.official_masks[i]
        self.scheduler.step()
        self.wd_scheduler.step()
        with self.autocast() if self.autocast else _nothing():
            with torch.no_grad():
                h = self.target_encoder(imgs)
                h = F.layer_norm(h, (h.size(-1),))
                B = len(h)
                h = apply_masks(h, masks_pred)
                h = repeat_interleave_batch(h, B, repeat=len(masks_enc))
            z = self.encoder(imgs, masks_enc)
            z = self.predictor(z, masks_enc, masks_pred)
            loss = F.smooth_l1_loss(z, h)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            m = next(self.momentum)
            for param_q, param_k in zip(self.encoder.parameters(), self.target_encoder.parameters()):
                param_k.data.mul_(m).add_((1.0 - m) * param_q.detach().data)
        float(loss)  # the reference reads the loss every step
        return loss.detach()

    def sample_masks(self) -> None:
        self.collator(list(range(self.setup.args.batch)))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def official_side(setup: Setup, weights: JepaflowSide) -> Side:
    """The official modules with jepaflow's initial weights (same parameter names)."""
    from functools import partial

    import src.models.vision_transformer as vit

    args = setup.args
    width, depth, heads = setup.dims
    norm = partial(torch.nn.LayerNorm, eps=1e-6)
    encoder = vit.VisionTransformer(img_size=[args.img], patch_size=args.patch, embed_dim=width, depth=depth,
                                    num_heads=heads, mlp_ratio=VIT_SIZES[args.size][3], qkv_bias=True,
                                    norm_layer=norm)
    predictor = vit.vit_predictor(num_patches=encoder.patch_embed.num_patches, embed_dim=width,
                                  predictor_embed_dim=args.pred_width, depth=args.pred_depth, num_heads=heads)
    encoder.load_state_dict(weights.objective.encoder.state_dict())
    predictor.load_state_dict(weights.objective.predictor.state_dict())
    return OfficialStepSide("official", setup, encoder, predictor)


def lightly_side(setup: Setup, weights: JepaflowSide) -> Side:
    """lightly's I-JEPA modules (``IJEPAPredictorTIMM``; a timm ViT through ``MaskedVisionTransformerTIMM``) in the
    official step, with jepaflow's initial weights mapped onto their names."""
    import timm
    from lightly.models.modules.ijepa_timm import IJEPAPredictorTIMM
    from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM

    args = setup.args
    width, depth, heads = setup.dims
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=args.img, patch_size=args.patch,
                            embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=VIT_SIZES[args.size][3],
                            class_token=False, global_pool="", num_classes=0, no_embed_class=True,
                            norm_layer=partial_ln())
    enc = MaskedVisionTransformerTIMM(vit=vit)
    pred = IJEPAPredictorTIMM(num_patches=setup.grid[0] * setup.grid[1], depth=args.pred_depth, mlp_dim=width,
                              predictor_embed_dim=args.pred_width, num_heads=heads)
    ours_enc = weights.objective.encoder.state_dict()
    enc_sd = {("vit." + k): v for k, v in ours_enc.items()}
    missing = enc.load_state_dict(enc_sd, strict=False)
    if missing.unexpected_keys or [k for k in missing.missing_keys if "mask_token" not in k]:
        raise RuntimeError(f"lightly encoder weights do not map: {missing}")
    ours_pred = weights.objective.predictor.state_dict()
    pred.load_state_dict(ours_pred)  # lightly remaps the reference's predictor names itself

    class Encoder(torch.nn.Module):  # the official calling convention: encoder(imgs, [idx])
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, imgs, masks=None):
            return self.inner(imgs, idx_keep=masks[0] if masks else None)

    class Predictor(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z, masks_x, masks):
            return self.inner(z, masks_x, masks)

    side = OfficialStepSide("lightly", setup, Encoder(enc), Predictor(pred))
    return side


def partial_ln() -> Callable[..., torch.nn.Module]:
    from functools import partial

    return partial(torch.nn.LayerNorm, eps=1e-6)


# ------------------------------------------------------------------------------------------------ measuring
@dataclass
class Measured:
    step_s: list[float] = field(default_factory=list)
    mask_s: list[float] = field(default_factory=list)
    peak_mib: float = 0.0
    losses: list[float] = field(default_factory=list)
    flops: float | None = None
    error: str | None = None


def count_flops(side: Side, i: int) -> float | None:
    """FLOPs of one training step of ``side`` (forward + backward), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    def onednn_linear_flops(x_shape, w_shape, *args, **kwargs) -> int:
        # train.onednn_linear's GEMM (x @ w^T), which torch's counter has no formula for
        return 2 * x_shape[0] * x_shape[1] * w_shape[0]

    mapping = {}
    if hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping[torch.ops.mkldnn._linear_pointwise] = onednn_linear_flops  # keyed by overload packet
    try:
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            side.step(i)
        return float(counter.get_total_flops())
    except Exception as exc:  # e.g. a compiled graph the counter cannot see into
        print(f"  [{side.name}] FLOP count failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return None


def measure(sides: list[Side], setup: Setup) -> dict[str, Measured]:
    args, dev = setup.args, setup.device
    res = {s.name: Measured() for s in sides}
    live = list(sides)

    def fail(s: Side, exc: BaseException) -> None:  # one side's error (e.g. out of memory) ends that side only
        res[s.name].error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        print(f"  [{s.name}] failed: {res[s.name].error}", file=sys.stderr, flush=True)
        live.remove(s)
        res[s.name].step_s.clear()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    for s in list(live):  # warm-up: allocator, optimizer state, kernel selection, compilation
        if STOP["requested"]:
            fail(s, RuntimeError("stopped (SIGTERM) before its warm-up"))
            continue
        try:
            t0 = time.perf_counter()
            for w in range(args.warmup):
                loss = s.step(w)
                if w == 0:
                    res[s.name].losses.append(float(loss))
            sync(dev)
            print(f"  [{s.name}] warm-up {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        except Exception as exc:
            fail(s, exc)
    i0 = args.warmup
    for r in range(args.rounds):
        if STOP["requested"]:
            print(f"  stopped (SIGTERM) after {r} rounds", file=sys.stderr, flush=True)
            break
        order = live[r % max(1, len(live)):] + live[: r % max(1, len(live))]
        for s in order:
            m = res[s.name]
            try:
                with PeakMemory(dev) as mem:
                    for k in range(args.steps):
                        i = i0 + r * args.steps + k
                        sync(dev)
                        t0 = time.perf_counter()
                        loss = s.step(i)
                        sync(dev)
                        m.step_s.append(time.perf_counter() - t0)
                m.peak_mib = max(m.peak_mib, mem.peak if dev.type == "cuda" else mem.added)
                m.losses.append(float(loss))
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    s.sample_masks()
                    m.mask_s.append(time.perf_counter() - t0)
            except Exception as exc:
                fail(s, exc)
        med = {s.name: statistics.median(res[s.name].step_s) * 1000 for s in live}
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()),
              file=sys.stderr, flush=True)
    if args.flops and not STOP["requested"]:
        last = i0 + args.rounds * args.steps
        for s in live:
            res[s.name].flops = count_flops(s, last)
    return res


# ------------------------------------------------------------------------------------------------ report
def model_flops(sides: list[Side], res: dict[str, Measured]) -> dict[str, tuple[float | None, str]]:
    """FLOPs per step for MFU: a side's own count, except that a jepaflow variant whose only differences are
    ``train.*`` switches (which do not change the model's arithmetic) takes the count of the first such variant
    without ``train.compile`` (the counter may not see into compiled code) and without
    ``train.grad_checkpointing`` (recomputation is not model FLOPs). Returns ``{side: (flops, note)}``."""
    def model_key(s: Side) -> tuple[str, ...] | None:
        if not isinstance(s, JepaflowSide):
            return None
        return tuple(sorted(o for o in s.overrides if not o.startswith("train.")))

    def plain(s: Side) -> bool:
        return not any(o.startswith(("train.compile", "train.grad_checkpointing")) and o.endswith("true")
                       for o in getattr(s, "overrides", []))

    out: dict[str, tuple[float | None, str]] = {}
    for s in sides:
        own = res[s.name].flops
        key = model_key(s)
        if key is not None and not plain(s):
            ref = next((o for o in sides if model_key(o) == key and plain(o) and res[o.name].flops), None)
            if ref is not None:
                out[s.name] = (res[ref.name].flops, f"counted on `{ref.name}`")
                continue
            if own and "grad_checkpointing" in " ".join(s.overrides):
                out[s.name] = (own, "incl. recomputation")
                continue
        out[s.name] = (own or None, "")
    return out


def summarize(args: argparse.Namespace, setup: Setup, sides: list[Side], res: dict[str, Measured]) -> dict[str, dict]:
    """Per side: median step and mask times, images/s, ratios to the baseline side, peak memory, FLOPs, MFU."""
    ok = [s for s in sides if res[s.name].step_s]
    base = "official" if any(s.name == "official" for s in ok) else (ok[0].name if ok else None)
    cuda = setup.device.type == "cuda"
    peak = args.peak_tflops if args.peak_tflops is not None else (DEFAULT_CUDA_PEAK_TFLOPS if cuda else None)
    flops = model_flops(sides, res) if args.flops else {}
    out: dict[str, dict] = {}
    for s in sides:
        m = res[s.name]
        error = m.error or (None if m.step_s else "no timed steps (stopped by a time limit)")
        row: dict[str, Any] = {"params_m": getattr(s, "params", 0) / 1e6, "error": error,
                               "overrides": getattr(s, "overrides", None)}
        if m.step_s:
            step, masks = statistics.median(m.step_s), statistics.median(m.mask_s)
            row.update(step_ms=step * 1000, p90_ms=percentile(m.step_s, 90) * 1000, masks_ms=masks * 1000,
                       img_s=args.batch / step, img_s_with_masks=args.batch / (step + masks), peak_mib=m.peak_mib,
                       loss_first=m.losses[0], loss_last=m.losses[-1])
            if base is not None:
                b = res[base]
                b_step = statistics.median(b.step_s)
                row["x_base_step"] = b_step / step
                row["x_base_with_masks"] = (b_step + statistics.median(b.mask_s)) / (step + masks)
            f, note = flops.get(s.name, (None, ""))
            if f:
                row.update(gflop=f / 1e9, tflops=f / step / 1e12, flop_note=note)
                if peak:
                    row["mfu"] = f / step / 1e12 / peak
        out[s.name] = row
    out["_meta"] = {"base": base, "peak_tflops": peak}
    return out


def report(args: argparse.Namespace, setup: Setup, sides: list[Side], summary: dict[str, dict],
           command: str) -> str:
    width, depth, heads = setup.dims
    base, peak = summary["_meta"]["base"], summary["_meta"]["peak_tflops"]
    cuda = setup.device.type == "cuda"
    ctx = statistics.fmean(float(m.context.shape[1]) for m in setup.masks)
    tgt = statistics.fmean(float(m.targets.shape[2]) for m in setup.masks)
    head = ["side", "params (M)", "step ms (median)", "p90", "masks ms", "img/s (step)", "img/s (step + masks)",
            f"x {base} (step)", f"x {base} (step + masks)",
            "peak MiB" + (" (CUDA alloc)" if cuda else " (RSS added)"), "loss step 0", "loss last"]
    if args.flops:
        head += ["GFLOP/step", "TFLOP/s"] + (["MFU"] if peak else [])
    rows = []
    for s in sides:
        r = summary[s.name]
        if "step_ms" not in r:
            rows.append([s.name, r["params_m"], f"failed: {r['error']}"] + ["-"] * (len(head) - 3))
            continue
        row = [s.name, r["params_m"], r["step_ms"], r["p90_ms"], r["masks_ms"], r["img_s"], r["img_s_with_masks"],
               f"{r['x_base_step']:.2f}", f"{r['x_base_with_masks']:.2f}", r["peak_mib"], f"{r['loss_first']:.5f}",
               f"{r['loss_last']:.5f}"]
        if args.flops:
            note = f" ({r['flop_note']})" if r.get("flop_note") else ""
            row += [f"{r['gflop']:,.1f}{note}" if "gflop" in r else "-", r.get("tflops")]
            if peak:
                row += [f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"]
        rows.append(row)
    size = "" if (args.width or args.depth or args.heads) else f"-{args.size}"
    title = (f"### I-JEPA training step: ViT{size} (width {width}, depth {depth}, heads {heads}), "
             f"{args.img} px / patch {args.patch}, predictor {args.pred_width} x {args.pred_depth}, batch "
             f"{args.batch}, {args.precision}, {setup.device.type}")
    what = (f"{args.rounds} interleaved rounds x {args.steps} steps per side after {args.warmup} warm-up steps; "
            f"masks: {'official MaskCollator' if args.reference else 'jepaflow multiblock ' + args.mask_mode} "
            f"(mean context {ctx:.1f}, target block {tgt:.1f} of {setup.grid[0] * setup.grid[1]} patches, "
            f"4 blocks), the same for every side. `masks ms`: each side's own sampler on one batch "
            f"(jepaflow: multiblock {'official' if args.reference else args.mask_mode}). Peak memory: "
            + ("`torch.cuda.max_memory_allocated` during the side's steps." if cuda else
               "resident-set high-water mark during the side's steps minus the resident set before them."))
    if peak and args.flops:
        what += f" MFU: model FLOPs per step / median step time / {peak:g} TFLOP/s."
    variants = [f"`{s.name}`: {', '.join(s.overrides) or 'recipe defaults'}" for s in sides
                if isinstance(s, JepaflowSide)]
    lines = [title, "", *machine_lines(command), "", what]
    if variants:
        lines += ["", "jepaflow variants: " + "; ".join(variants) + "."]
    lines += ["", *table(head, rows), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ driver
def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"a variant is NAME:PATH=VALUE,PATH=VALUE (got {text!r})")
    return name, [o for o in rest.split(",") if o]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--size", default="small", choices=sorted(VIT_SIZES), help="ViT size (default small)")
    p.add_argument("--width", type=int, help="encoder width (overrides the size's)")
    p.add_argument("--depth", type=int, help="encoder depth (overrides the size's)")
    p.add_argument("--heads", type=int, help="encoder heads (overrides the size's)")
    p.add_argument("--img", type=int, default=224, help="image side in pixels")
    p.add_argument("--patch", type=int, default=16, help="patch side in pixels")
    p.add_argument("--batch", type=int, default=16, help="images per step")
    p.add_argument("--pred-width", type=int, default=384, help="predictor width (official default 384)")
    p.add_argument("--pred-depth", type=int, default=6,
                   help="predictor depth (official init_model default 6; the ViT-H configs use 12)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--mask-mode", choices=["official", "fixed"], default="official",
                   help="jepaflow masker mode when there is no --reference (with it: the official collator)")
    p.add_argument("--min-keep", type=int, help="masks' min_keep (default: 10, the official configs' value, or 4, "
                   "the MaskCollator default, on grids under 14 x 14 where 10 can exclude every target block)")
    p.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME:PATH=V,...",
                   help="a jepaflow side with these recipe overrides (repeatable); default: one, 'jepaflow'")
    p.add_argument("--reference", metavar="PATH", help="checkout of facebookresearch/ijepa (the folder with src/)")
    p.add_argument("--lightly", action="store_true", help="also lightly's I-JEPA modules (needs lightly, timm)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--flops", action="store_true", help="count FLOPs of one step per side; TFLOP/s, MFU")
    p.add_argument("--peak-tflops", type=float, help=f"peak for MFU (default on CUDA {DEFAULT_CUDA_PEAK_TFLOPS:g})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument("--append", action="store_true", help="append to --out")
    p.add_argument("--json", help="also write the raw measurements (JSON) to this file")
    args = p.parse_args(argv)
    if args.min_keep is None:
        args.min_keep = 10 if args.img // args.patch >= 14 else 4
    if args.rounds < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--rounds, --steps and --warmup must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: STOP.update(requested=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference:
        import_reference(args.reference)
    command = command_line(argv)
    total = args.warmup + args.rounds * args.steps + 1
    try:
        setup = make_setup(args, total)
    except JepaflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    variants = args.variant or [("jepaflow", [])]
    sides: list[Side] = [JepaflowSide(name, setup, overrides) for name, overrides in variants]
    if args.reference:
        sides.append(official_side(setup, sides[0]))
    if args.lightly:
        try:
            sides.append(lightly_side(setup, sides[0]))
        except ImportError as exc:
            print(f"lightly side skipped: {exc}", file=sys.stderr)
    gc.collect()
    print(f"sides: {', '.join(s.name for s in sides)}; device {setup.device}", file=sys.stderr, flush=True)
    res = measure(sides, setup)
    summary = summarize(args, setup, sides, res)
    text = report(args, setup, sides, summary, command)
    emit(text, args.out, args.append)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "raw": {k: vars(v) for k, v in res.items()}},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

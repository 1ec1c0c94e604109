"""Contract checkers for plugins: call them in your plugin's tests; jepaflow calls them before training.

Each checker runs a plugin on a small sample input and raises :class:`~jepaflow.errors.ContractError` (exit code 2
in the CLI) naming the plugin, its package and the broken rule, rather than letting the first training step fail
deep inside a gather with a traceback that never names the plugin::

    from jepaflow.testing import check_masker
    def test_my_masker_keeps_the_contract():
        check_masker(MyMasker(MyMasker.Config()), grid_size=(14, 14), batch_size=8)

* :func:`check_masker` -- ``Masker.check`` then one sampled batch, checked by :func:`check_mask_batch`: int64
  indices in ``[0, N)``, shapes ``(B, K_ctx)`` and ``(B, M, K_tgt)``, bool ``*_valid`` masks of the same shapes,
  at least one valid context patch per image, no patch in both the context and a target of the same image
  unless the masker's ``allows_overlap`` is True. ``jepaflow validate``, ``jepaflow masks`` and ``jepaflow run``
  (on the masks of its first micro-batch) call it.
* :func:`check_encoder` -- the attributes (``embed_dim``, ``patch_size``, ``grid_size``, ``in_chans``), tokens
  ``(B, N, D)``, ``pool`` ``(B, D)``, and each declared capability (``Encoder.capabilities``): ``drop_patches``
  (``(B, K, D)``; a padded entry masked by ``keep_valid`` changes nothing for the others), ``intermediate_layers``,
  ``mask_token`` (an empty mask gives the plain forward), ``transformer_dims``.
* :func:`check_predictor` -- ``(B, M, K_tgt, out_dim)`` predictions from context tokens, with and without padding.
* :func:`check_view_sampler` -- ``num_views`` finite float views ``(C, H_v, W_v)`` of one image.

The checkers run the modules in eval mode (restored afterwards), without gradients, and leave the global RNG as
they found it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from jepaflow.errors import ContractError, JepaflowError
from jepaflow.interfaces import ENCODER_CAPABILITIES, Encoder, MaskBatch, Masker, Predictor, ViewSampler

__all__ = ["check_masker", "check_mask_batch", "check_encoder", "check_predictor", "check_view_sampler",
           "plugin_label"]


# ------------------------------------------------------------------------------------------------ naming
def plugin_label(obj: Any, kind: str, name: str | None = None) -> str:
    """``"masker 'stripes' (package jepaflow-stripes 0.1.0)"`` for a plugin object, found in the registry by its
    class (its entry point's ``module:attr``); ``"masker class pkg.mod.Cls"`` for a class no entry point names."""
    from jepaflow.registry import default_registry

    cls = obj if isinstance(obj, type) else type(obj)
    target = f"{cls.__module__}:{cls.__qualname__}"
    try:
        infos = default_registry().infos(kind)
    except Exception:  # naming must never hide the real error
        infos = []
    for info in infos:
        if (name is None or info.name == name) and info.target == target:
            return f"{kind} {info.name!r} (package {info.package} {info.version})"
    if name is not None:
        return f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__})"
    return f"{kind} class {cls.__module__}.{cls.__qualname__}"


def _fail(label: str, kind: str, rule: str) -> ContractError:
    return ContractError(
        f"{label} breaks the {kind} contract: {rule}",
        f"fix the plugin (or report it to its authors); jepaflow.testing.check_{kind}() reproduces this in a test, "
        f"and docs/writing-a-plugin.md states the contract",
    )


@contextlib.contextmanager
def _calling(label: str, kind: str, what: str) -> Iterator[None]:
    """A plugin's own exception, as one line naming the plugin (a JepaflowError passes through unchanged)."""
    try:
        yield
    except JepaflowError:
        raise
    except Exception as exc:
        raise ContractError(
            f"{label} failed {what}: {type(exc).__name__}: {exc}",
            f"check its settings against the recipe (image size, patch size, widths); "
            f"jepaflow.testing.check_{kind}() reproduces this in a test",
        ) from exc


@contextlib.contextmanager
def _eval_no_grad(*modules: torch.nn.Module) -> Iterator[None]:
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


# ------------------------------------------------------------------------------------------------ maskers
def check_mask_batch(masks: Any, grid_size: tuple[int, int], batch_size: int, label: str = "masker",
                     allows_overlap: bool = False) -> None:
    """Check one masker output against the :class:`~jepaflow.interfaces.Masker` contract (see module docstring).

    Args:
        masks: what the masker returned.
        grid_size: ``(H_p, W_p)``, ``N = H_p * W_p``.
        batch_size: the ``B`` it was asked for.
        label: how the error names the plugin (see :func:`plugin_label`).
        allows_overlap: skip the context/target disjointness rule.
    """
    kind = "masker"
    if not isinstance(masks, MaskBatch):
        raise _fail(label, kind, f"it returned {type(masks).__name__}, not a jepaflow.interfaces.MaskBatch")
    N = int(grid_size[0]) * int(grid_size[1])
    ctx, tgt = masks.context, masks.targets
    for field, t, dims in (("context", ctx, 2), ("targets", tgt, 3)):
        if not isinstance(t, Tensor):
            raise _fail(label, kind, f"{field} is a {type(t).__name__}, not a tensor")
        if t.dtype != torch.int64:
            raise _fail(label, kind, f"{field} has dtype {t.dtype}; indices must be torch.int64")
        if t.dim() != dims or t.shape[0] != batch_size or any(s < 1 for s in t.shape[1:]):
            want = "(B, K_ctx)" if dims == 2 else "(B, M, K_tgt)"
            raise _fail(label, kind, f"{field} has shape {tuple(t.shape)}; expected {want} with B = {batch_size} "
                                     f"and every other size at least 1")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= N:
            bad = lo if lo < 0 else hi
            raise _fail(label, kind, f"{field} holds patch index {bad}, outside [0, {N}) for the "
                                     f"{grid_size[0]}x{grid_size[1]} grid (padding entries must hold a valid index "
                                     f"too, e.g. 0)")
    for field, v, ref in (("context_valid", masks.context_valid, ctx), ("targets_valid", masks.targets_valid, tgt)):
        if v is None:
            continue
        if not isinstance(v, Tensor) or v.dtype != torch.bool or v.shape != ref.shape:
            got = f"{v.dtype}, shape {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
            raise _fail(label, kind, f"{field} must be a bool tensor of the shape of "
                                     f"{field.split('_')[0]} {tuple(ref.shape)} (or None); got {got}")
    ctx_valid = masks.context_valid if masks.context_valid is not None else torch.ones_like(ctx, dtype=torch.bool)
    tgt_valid = masks.targets_valid if masks.targets_valid is not None else torch.ones_like(tgt, dtype=torch.bool)
    empty = ~ctx_valid.any(dim=1)  # (B,)
    if bool(empty.any()):
        raise _fail(label, kind, f"image {int(empty.nonzero()[0])} of the batch has an empty context (no valid "
                                 f"context patch)")
    if not allows_overlap:
        B = ctx.shape[0]
        # (B, N) membership of the valid entries; amax so that a padding entry (index 0, invalid) never clears
        # a real index 0
        in_ctx = torch.zeros(B, N).scatter_reduce(1, ctx, ctx_valid.float(), reduce="amax") > 0
        flat_t, flat_v = tgt.reshape(B, -1), tgt_valid.reshape(B, -1)
        in_tgt = torch.zeros(B, N).scatter_reduce(1, flat_t, flat_v.float(), reduce="amax") > 0
        both = in_ctx & in_tgt
        if bool(both.any()):
            b, n = (int(i) for i in both.nonzero()[0])
            raise _fail(label, kind, f"patch {n} of image {b} is both in the context and in a target; the context "
                                     f"must exclude the targets (or the masker must set allows_overlap = True)")


def check_masker(masker: Masker, grid_size: tuple[int, int], batch_size: int = 4,
                 generator: torch.Generator | None = None, *, name: str | None = None) -> MaskBatch:
    """``masker.check(grid_size)``, then one batch of ``batch_size`` masks checked by :func:`check_mask_batch`.

    Args:
        masker: the plugin instance.
        grid_size: the encoder's patch grid ``(H_p, W_p)``.
        batch_size: ``B`` of the sample batch.
        generator: the generator to draw with (default: seeded with 0).
        name: the recipe's name for it (for the message; found from the registry otherwise).
    Returns:
        the checked :class:`MaskBatch`.
    """
    label = plugin_label(masker, "masker", name)
    grid_size = (int(grid_size[0]), int(grid_size[1]))
    where = f"on the {grid_size[0]}x{grid_size[1]} patch grid"
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    with _calling(label, "masker", where):
        check = getattr(masker, "check", None)
        if callable(check):
            check(grid_size)
        masks = masker(batch_size, grid_size, gen)
    check_mask_batch(masks, grid_size, batch_size, label, bool(getattr(masker, "allows_overlap", False)))
    return masks


# ------------------------------------------------------------------------------------------------ encoders
def _image_size(encoder: Encoder) -> tuple[int, int]:
    size = getattr(getattr(encoder, "config", None), "img_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return encoder.grid_size[0] * encoder.patch_size, encoder.grid_size[1] * encoder.patch_size


def _finite(label: str, kind: str, what: str, t: Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise _fail(label, kind, f"{what} holds NaN or infinite values")


def _shape(label: str, kind: str, what: str, t: Any, expected: tuple[int, ...]) -> None:
    if not isinstance(t, Tensor):
        raise _fail(label, kind, f"{what} is a {type(t).__name__}, not a tensor")
    if tuple(t.shape) != expected:
        raise _fail(label, kind, f"{what} has shape {tuple(t.shape)}, expected {expected}")
    if not t.is_floating_point():
        raise _fail(label, kind, f"{what} has dtype {t.dtype}, expected a floating-point tensor")
    _finite(label, kind, what, t)


def check_encoder(encoder: Encoder, batch_size: int = 2, image_size: int | tuple[int, int] | None = None, *,
                  name: str | None = None, atol: float = 1e-4) -> None:
    """Check an encoder's attributes, tokens, pooling and every capability it declares (see module docstring).

    Args:
        encoder: the plugin instance (on the CPU, or any device: inputs follow its parameters).
        batch_size: ``B`` of the sample images (random, normal).
        image_size: input side(s); default ``config.img_size`` or ``grid_size * patch_size``.
        atol: tolerance of the equivalence checks (padding, empty mask).
    """
    kind = "encoder"
    label = plugin_label(encoder, kind, name)
    for attr in ("embed_dim", "patch_size", "in_chans"):
        value = getattr(encoder, attr, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(label, kind, f"attribute {attr} must be a positive int, got {value!r}")
    grid = getattr(encoder, "grid_size", None)
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2 and all(isinstance(g, int) and g >= 1 for g in grid)):
        raise _fail(label, kind, f"attribute grid_size must be a pair of positive ints, got {grid!r}")
    caps = set(getattr(encoder, "capabilities", ()))
    unknown = sorted(caps - set(ENCODER_CAPABILITIES))
    if unknown:
        raise _fail(label, kind, f"capabilities {unknown} are unknown (known: {', '.join(ENCODER_CAPABILITIES)})")
    B, D, N = batch_size, encoder.embed_dim, grid[0] * grid[1]
    H, W = (image_size, image_size) if isinstance(image_size, int) else (image_size or _image_size(encoder))
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(B, encoder.in_chans, H, W, generator=g).to(device)
    with _eval_no_grad(encoder):
        with _calling(label, kind, f"on images of shape {(B, encoder.in_chans, H, W)}"):
            tokens = encoder(images)
        _shape(label, kind, "forward(images)", tokens, (B, N, D))
        with _calling(label, kind, "to pool its tokens"):
            pooled = encoder.pool(tokens)
        _shape(label, kind, "pool(tokens)", pooled, (B, D))

        if "drop_patches" in caps:
            K = max(1, N // 2)
            keep = torch.stack([torch.randperm(N, generator=g)[:K].sort().values for _ in range(B)]).to(device)
            with _calling(label, kind, "with keep indices (drop_patches)"):
                kept = encoder(images, keep)
            _shape(label, kind, "forward(images, keep)", kept, (B, K, D))
            # one padded entry, masked out by keep_valid, must not change the real tokens
            padded = torch.cat([keep, keep[:, :1]], dim=1)
            valid = torch.ones_like(padded, dtype=torch.bool)
            valid[:, -1] = False
            with _calling(label, kind, "with padded keep indices (keep_valid)"):
                out = encoder(images, padded, valid)
            _shape(label, kind, "forward(images, keep, keep_valid)", out, (B, K + 1, D))
            if not torch.allclose(out[:, :K], kept, atol=atol, rtol=1e-4):
                raise _fail(label, kind, "a padded keep entry (keep_valid False) changes the tokens of the valid "
                                         "entries; padded entries must be masked out of attention")
        if "intermediate_layers" in caps:
            with _calling(label, kind, "in forward_layers(images, 2)"):
                layers = encoder.forward_layers(images, 2)
            if not isinstance(layers, (list, tuple)) or len(layers) != 2:
                raise _fail(label, kind, "forward_layers(images, 2) must return a list of 2 tensors")
            for i, layer in enumerate(layers):
                _shape(label, kind, f"forward_layers(images, 2)[{i}]", layer, (B, N, D))
        if "mask_token" in caps:
            token = torch.randn(D, generator=g).to(device)
            none = torch.zeros(B, N, dtype=torch.bool, device=device)
            some = torch.rand(B, N, generator=g).to(device) < 0.5
            with _calling(label, kind, "in forward_masked"):
                plain = encoder.forward_masked(images, none, token)
                masked = encoder.forward_masked(images, some, token)
            _shape(label, kind, "forward_masked(images, mask, token)", masked, (B, N, D))
            if not torch.allclose(plain, tokens, atol=atol, rtol=1e-4):
                raise _fail(label, kind, "forward_masked with an all-False mask differs from forward(images)")
        if "transformer_dims" in caps:
            for attr in ("depth", "num_heads"):
                value = getattr(encoder, attr, None)
                if not isinstance(value, int) or value < 1:
                    raise _fail(label, kind, f"declares transformer_dims but {attr} is {value!r}, not a positive int")


# ------------------------------------------------------------------------------------------------ predictors
def check_predictor(predictor: Predictor, encoder: Encoder | None = None, batch_size: int = 2, *,
                    embed_dim: int | None = None, grid_size: tuple[int, int] | None = None,
                    name: str | None = None) -> None:
    """Check a predictor on random context tokens: ``(B, M, K_tgt, out_dim)`` predictions, finite, with and without
    padding (``*_valid``). The encoder width and grid come from ``encoder`` (the one it was built with) or from
    ``embed_dim`` and ``grid_size``."""
    kind = "predictor"
    label = plugin_label(predictor, kind, name)
    D = embed_dim if embed_dim is not None else encoder.embed_dim
    grid = grid_size if grid_size is not None else tuple(encoder.grid_size)
    out_dim = getattr(predictor, "out_dim", None)
    if not isinstance(out_dim, int) or out_dim < 1:
        raise _fail(label, kind, f"attribute out_dim must be a positive int, got {out_dim!r}")
    N = grid[0] * grid[1]
    if N < 2:
        raise ValueError(f"check_predictor needs a grid of at least 2 patches, got {grid}")
    B, M = batch_size, 2
    K_ctx = max(1, N // 2)
    K_tgt = max(1, min(N - K_ctx, N // 4 or 1))
    g = torch.Generator().manual_seed(0)
    param = next(predictor.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    perms = torch.stack([torch.randperm(N, generator=g) for _ in range(B)])
    ctx_idx = perms[:, :K_ctx].sort(dim=1).values.to(device)
    tgt_idx = perms[:, None, K_ctx:K_ctx + K_tgt].expand(B, M, K_tgt).contiguous().to(device)  # (B, M, K_tgt)
    z = torch.randn(B, K_ctx, D, generator=g).to(device)
    # the last context entry and target query of image 0 marked as padding (when one would remain)
    ctx_valid = torch.ones(B, K_ctx, dtype=torch.bool, device=device)
    ctx_valid[0, -1] = K_ctx == 1
    tgt_valid = torch.ones(B, M, K_tgt, dtype=torch.bool, device=device)
    tgt_valid[0, 0, -1] = K_tgt == 1
    with _eval_no_grad(predictor):
        with _calling(label, kind, f"on context tokens {(B, K_ctx, D)} and targets {(B, M, K_tgt)}"):
            out = predictor(z, ctx_idx, tgt_idx)
            out_padded = predictor(z, ctx_idx, tgt_idx, ctx_valid, tgt_valid)
    _shape(label, kind, "forward(context_tokens, context_idx, target_idx)", out, (B, M, K_tgt, out_dim))
    _shape(label, kind, "forward(..., context_valid, target_valid)", out_padded, (B, M, K_tgt, out_dim))


# ------------------------------------------------------------------------------------------------ view samplers
def check_view_sampler(sampler: ViewSampler, image_size: int, channels: int, *, name: str | None = None) -> None:
    """Check a view sampler on one random ``(channels, image_size, image_size)`` uint8 image: a list of
    ``num_views`` finite float tensors ``(channels, H_v, W_v)``."""
    kind = "view_sampler"
    label = plugin_label(sampler, "view", name)
    num_views = getattr(sampler, "num_views", None)
    if not isinstance(num_views, int) or num_views < 1:
        raise _fail(label, kind, f"attribute num_views must be a positive int, got {num_views!r}")
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (channels, image_size, image_size), generator=g, dtype=torch.uint8)
    with torch.random.fork_rng(devices=[]), _calling(label, kind, f"on a {channels}x{image_size}x{image_size} image"):
        views = sampler(image)
    if not isinstance(views, (list, tuple)) or len(views) != num_views:
        got = f"{len(views)} items" if isinstance(views, (list, tuple)) else type(views).__name__
        raise _fail(label, kind, f"it must return a list of num_views = {num_views} tensors, got {got}")
    for i, v in enumerate(views):
        if not isinstance(v, Tensor) or v.dim() != 3 or v.shape[0] != channels:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise _fail(label, kind, f"view {i} has shape {shape}, expected ({channels}, H_v, W_v)")
        if not v.is_floating_point():
            raise _fail(label, kind, f"view {i} has dtype {v.dtype}; views are normalized float tensors")
        _finite(label, kind, f"view {i}", v)

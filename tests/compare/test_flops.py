"""Training FLOPs: torch's counter with CPU attention added, checked by hand on a linear layer, against written-out
attention, and on whole recipes (batch scaling, gradient accumulation, the on-disk cache)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_RECIPE, merge

from jepaflow.compare.flops import FlopsCache, count_flops, step_flops

MAE = merge(TINY_RECIPE, {"predictor": {"name": "mae_decoder", "embed_dim": 32, "depth": 1, "num_heads": 2},
                          "masker": {"name": "random", "mask_ratio": 0.75}, "objective": {"name": "mae"}})
for key in ("target_updater",):
    MAE.pop(key)
MAE["masker"] = {"name": "random", "mask_ratio": 0.75}


def test_linear_layer_by_hand():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(5, 8)

    def fwd_bwd(inp):
        layer(inp).sum().backward()

    # forward 2*B*I*O; backward: the weight gradient (2*B*I*O) and, when the input needs one, its gradient too
    assert count_flops(fwd_bwd, x) == 2 * 5 * 8 * 4 * 2
    assert count_flops(fwd_bwd, x.clone().requires_grad_()) == 2 * 5 * 8 * 4 * 3


def test_cpu_attention_is_counted_as_its_matrix_products():
    q, k, v = (torch.randn(2, 3, 7, 16, requires_grad=True) for _ in range(3))

    def fused():
        F.scaled_dot_product_attention(q, k, v).sum().backward()

    def written_out():
        a = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1)
        (a @ v).sum().backward()

    assert count_flops(written_out) > 0
    assert count_flops(fused) == count_flops(written_out)  # fused CPU kernel: counted, and counted the same
    # forward alone: two (7 x 16) @ (16 x 7) products per head
    with torch.no_grad():
        assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * (2 * 3 * 7 * 7 * 16) * 2


def test_a_recipe_step_counts_the_same_with_fused_or_written_out_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    recipe = copy.deepcopy(TINY_RECIPE)
    fused = step_flops(recipe).flops
    with sdpa_kernel([SDPBackend.MATH]):  # attention as explicit matrix products, which torch counts itself
        math = step_flops(recipe).flops
    assert fused == math > 0


def test_batch_scaling_and_accumulation_are_exact_for_fixed_masks():
    # MAE's random masker keeps the same number of patches in every image: the FLOPs are linear in the batch
    full = step_flops(MAE)
    assert full.counted_batch == 32 and full.note == "counted on one step"
    scaled = step_flops(MAE, max_batch=8)
    assert scaled.counted_batch == 8 and "scaled linearly to 32" in scaled.note
    assert scaled.flops == pytest.approx(full.flops, rel=1e-9)
    accum = step_flops(merge(MAE, {"optim": {"accum_steps": 4}}))  # 4 micro-batches of 8: the same step
    assert accum.flops == pytest.approx(full.flops, rel=1e-9) and "x 4 micro-batches" in accum.note
    double = step_flops(merge(MAE, {"train": {"batch_size": 64}}))
    assert double.flops == pytest.approx(2 * full.flops, rel=1e-9)


def test_counting_leaves_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    step_flops(copy.deepcopy(TINY_RECIPE))
    assert torch.equal(torch.rand(3), expected)


def test_cache_round_trip(tmp_path):
    cache = FlopsCache(tmp_path / "flops.json")
    key = FlopsCache.key({"objective": {"name": "mae"}}, 256)
    assert cache.get(key) is None
    value = step_flops(MAE)
    cache.put(key, value)
    assert FlopsCache(tmp_path / "flops.json").get(key) == value
    assert FlopsCache.key({"objective": {"name": "ijepa"}}, 256) != key
    (tmp_path / "flops.json").write_text("{broken")
    assert FlopsCache(tmp_path / "flops.json").get(key) is None  # a damaged cache is a recount, not an error

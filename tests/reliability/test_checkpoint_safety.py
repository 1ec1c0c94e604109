"""Checkpoints from strangers run no code; checkpoints jepaflow writes hold only what ``weights_only`` reads; no
checkpoint is ever written from, or loaded with, non-finite weights; a file describing a model far larger than
its tensors is refused before anything is allocated.

Every entry point that reads a file is tried with crafted files: ``jepaflow.load_encoder`` (file and run
folder), ``jepaflow run --resume``, ``jepaflow export``, and the timm encoders' ``checkpoint`` field. Each crafted file is first shown
to be live (a plain ``torch.load(weights_only=False)`` does run its payload), so that these tests can fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from clikit import assert_one_message, invoke

from jepaflow.checkpoints import check_plain, read_checkpoint, write_checkpoint
from jepaflow.config import Component, load_recipe
from jepaflow.engine.build import build_objective
from jepaflow.engine.checkpoint import load_checkpoint
from jepaflow.engine.trainer import train
from jepaflow.errors import CheckpointError, JepaflowError, TrainingDiverged
from jepaflow.hub import load_encoder
from jepaflow.objectives.ijepa import IJEPAObjective


class Payload:
    """Unpickling this writes a marker file: the stand-in for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def crafted_files(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (file, marker): the payload in each layout a loader might look into."""
    layouts = {
        # the exact file: the string jepaflow's old loader trusted, next to the payload
        "declares-jepaflow-format": lambda p: {"format": "jepaflow-checkpoint", "x": p},
        "in-a-jepaflow-state-dict": lambda p: {"format": "jepaflow-checkpoint", "version": 1, "recipe": {},
                                               "objective": {"w": p}, "step": 1},
        "official-layout": lambda p: {"encoder": {"patch_embed.proj.weight": p}, "target_encoder": p},
        "bare-object": lambda p: p,
        "in-a-state-dict": lambda p: {"patch_embed.proj.weight": p, "state_dict": {"a": p}},
    }
    out = {}
    for name, make in layouts.items():
        marker = tmp_path / f"{name}.marker"
        file = tmp_path / f"{name}.pt"
        torch.save(make(Payload(marker)), file)
        out[name] = (file, marker)
    return out


def test_the_crafted_files_are_live(tmp_path):
    for file, marker in crafted_files(tmp_path).values():
        torch.load(file, weights_only=False)  # what the old fallback did
        assert marker.read_text() == "pwned"


@pytest.mark.parametrize("layout", ["declares-jepaflow-format", "in-a-jepaflow-state-dict", "official-layout",
                                    "bare-object", "in-a-state-dict"])
def test_load_encoder_never_unpickles_code(tmp_path, layout):
    file, marker = crafted_files(tmp_path)[layout]
    with pytest.raises(CheckpointError) as info:
        load_encoder(file)
    assert not marker.exists()
    assert "Python objects" in info.value.problem and "never unpickles" in info.value.problem
    assert "weights_only=False" in info.value.fix  # how to salvage a file one trusts
    # the same file as a run folder's last.pt
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    file.replace(run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError):
        load_encoder(run)
    assert not marker.exists()


def test_resume_never_unpickles_code(tmp_path, recipe_file):
    path = recipe_file({"train": {"max_steps": 1}})
    invoke("run", path)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    file, marker = crafted_files(tmp_path)["in-a-jepaflow-state-dict"]
    file.replace(last)
    err = assert_one_message(invoke("run", path, "--resume"), "never unpickles")
    assert not marker.exists() and str(last) in err


@pytest.mark.parametrize("layout", ["declares-jepaflow-format", "official-layout"])
def test_export_never_unpickles_code(tmp_path, layout):
    file, marker = crafted_files(tmp_path)[layout]
    assert_one_message(invoke("export", file, "--output", tmp_path / "out"), "never unpickles")
    assert not marker.exists()


@pytest.mark.parametrize("plugin", ["timm_vit", "timm_cnn"])
def test_timm_checkpoint_field_never_unpickles_code(tmp_path, plugin):
    from jepaflow.encoders.timm_cnn import TimmCNNEncoder
    from jepaflow.encoders.timm_vit import TimmViTEncoder

    for layout in ("in-a-state-dict", "bare-object"):
        file, marker = crafted_files(tmp_path)[layout]
        with pytest.raises(CheckpointError, match="never unpickles"):
            if plugin == "timm_vit":
                TimmViTEncoder(TimmViTEncoder.Config(
                    model_name="vit_tiny_patch16_224", img_size=16, checkpoint=str(file),
                    model_kwargs={"patch_size": 4, "embed_dim": 48, "num_heads": 3, "depth": 2}))
            else:
                TimmCNNEncoder(TimmCNNEncoder.Config(model_name="resnet18", img_size=32, checkpoint=str(file)))
        assert not marker.exists()


def test_a_fifo_or_folder_is_not_read_as_a_checkpoint(tmp_path):
    import os

    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):  # would block forever in torch.load
        read_checkpoint(fifo)
    with pytest.raises(CheckpointError, match="folder without checkpoints/last.pt"):
        load_encoder(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_encoder(tmp_path / "empty.pt")


# ------------------------------------------------------------------------------------------------ what jepaflow writes
@pytest.mark.parametrize("optimizer", ["adamw", "lars"])
def test_engine_checkpoints_hold_only_weights_only_values(tiny_recipe, optimizer):
    r = tiny_recipe({"optim": {"name": optimizer}, "train": {"max_steps": 2}})
    train(load_recipe(r))
    ck = torch.load(Path(r["output_dir"]) / "checkpoints" / "last.pt", weights_only=True)  # the strict loader
    check_plain(ck)  # nothing but tensors, numbers, text and containers
    assert ck["rng"]["torch"].dtype == torch.uint8
    state = ck["optimizer"]["state"]
    assert state and all(isinstance(v, (torch.Tensor, int, float)) for s in state.values() for v in s.values())
    assert set(ck) >= {"format", "version", "recipe", "objective", "optimizer", "step", "epoch", "rng"}


def test_a_value_weights_only_would_refuse_is_never_written(tmp_path):
    path = tmp_path / "last.pt"
    write_checkpoint({"step": 1, "w": torch.ones(2)}, path)
    before = path.read_bytes()
    for bad in ({"rng": {"numpy": np.random.get_state()}}, {"w": np.zeros(3)}, {"f": Payload(tmp_path / "m")}):
        with pytest.raises(CheckpointError, match="weights_only=True"):
            write_checkpoint(bad, path)
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


# ------------------------------------------------------------------------------------------------ non-finite weights
class InfTargetAfter(IJEPAObjective):
    """I-JEPA whose target encoder gets an infinite weight during the forward of step ``at`` (1-based): the
    loss of that step is still finite, as after one update at a huge learning rate."""

    at = 3
    calls = 0

    def forward(self, batch):
        out = super().forward(batch)
        InfTargetAfter.calls += 1
        if InfTargetAfter.calls == InfTargetAfter.at:
            with torch.no_grad():
                next(self.target_encoder.parameters()).view(-1)[0] = float("inf")
        return out


def run_with_inf_weights(tiny_recipe, at: int):
    recipe = load_recipe(tiny_recipe({"train": {"checkpoint_every_steps": 1, "log_every": 100}}))
    comp = recipe.components["objective"]
    recipe.components["objective"] = Component(comp.kind, comp.name, InfTargetAfter, comp.config)
    InfTargetAfter.at, InfTargetAfter.calls = at, 0
    with pytest.raises(TrainingDiverged) as info:
        train(recipe)
    return Path(recipe.output_dir) / "checkpoints" / "last.pt", info.value


def test_non_finite_weights_are_never_checkpointed(tiny_recipe):
    last, exc = run_with_inf_weights(tiny_recipe, at=3)
    assert exc.exit_code == 3 and "before step 3" in exc.problem and str(last) in exc.problem
    ck = load_checkpoint(last)
    assert ck["step"] == 2  # the checkpoint of step 3 was refused; step 2's is the last good one
    assert all(torch.isfinite(v).all() for v in ck["objective"].values() if v.is_floating_point())
    load_encoder(last.parent.parent)  # and it loads


def test_divergence_before_any_checkpoint_promises_none(tiny_recipe):
    last, exc = run_with_inf_weights(tiny_recipe, at=1)
    assert not last.exists()
    assert "no checkpoint had been written yet" in exc.problem and "kept at" not in exc.problem
    assert "--resume" not in exc.fix


def test_a_diverging_run_through_the_cli_exits_3_and_keeps_finite_weights(recipe_file, tmp_path):
    # the command was optim.lr=.inf (now refused at validation, exit 2); the largest values allowed,
    # lr 100 with weight decay 100, diverge for real within a few steps
    path = recipe_file()
    err = assert_one_message(invoke("validate", path, "--set", "optim.lr=.inf"), "optim.lr", "finite")
    assert "must be a finite number" in err
    result = invoke("run", path, "--set", "optim.lr=100", "--set", "optim.start_lr=100", "--set",
                    "optim.weight_decay=100", "--set", "optim.final_weight_decay=100", "--set",
                    "train.checkpoint_every_steps=1", "--set", "train.log_every=100")
    assert_one_message(result, "NaN or infinite", code=3)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    if last.exists():  # whatever step it reached, it is finite
        assert all(torch.isfinite(v).all() for v in load_checkpoint(last)["objective"].values()
                   if v.is_floating_point())
        load_encoder(last)


def test_load_encoder_refuses_non_finite_weights(tmp_path, tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    state = build_objective(recipe).state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point() and "target" in k)
    state[key] = state[key].clone()
    state[key].view(-1)[1] = float("nan")
    torch.save({"format": "jepaflow-checkpoint", "version": 1, "recipe": recipe.to_dict(), "objective": state},
               tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) with NaN or infinite values") as info:
        load_encoder(tmp_path / "nan.pt")
    assert key in info.value.problem
    # official layout, an infinity in the target encoder
    enc = {k[len("target_encoder."):]: v for k, v in state.items() if k.startswith("target_encoder.")}
    enc["norm.weight"] = torch.full_like(enc["norm.weight"], float("inf"))
    torch.save({"encoder": enc, "target_encoder": enc}, tmp_path / "inf.pth.tar")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_encoder(tmp_path / "inf.pth.tar")


# ------------------------------------------------------------------------------------------------ sizes before memory
BIG_RECIPE_SCRIPT = r"""
import resource, sys, torch
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a regression fails here instead of swapping
from jepaflow.errors import JepaflowError
from jepaflow.hub import load_encoder
try:
    load_encoder(sys.argv[1])
except JepaflowError as exc:
    print("REFUSED", exc.problem[:300])
# VmHWM, not getrusage: ru_maxrss survives execve, so it would report the forking parent's (pytest's) size
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1]
print("MAXRSS_KB", hwm)
"""


@pytest.mark.parametrize("width,depth", [(65536, 64), (4096, 48)])
def test_a_recipe_larger_than_its_tensors_is_refused_before_allocating(tmp_path, tiny_recipe, width, depth):
    # the stored recipe (65536 x 64, 51 GB) and one inside every bound (4096 x 48, 38 GB of fp32)
    recipe = load_recipe(tiny_recipe())
    state = build_objective(recipe).state_dict()  # tiny tensors
    raw = recipe.to_dict()
    raw["encoder"].update(embed_dim=width, depth=depth, num_heads=16)
    torch.save({"format": "jepaflow-checkpoint", "version": 1, "recipe": raw, "objective": state},
               tmp_path / "big.pt")
    done = subprocess.run([sys.executable, "-c", BIG_RECIPE_SCRIPT, str(tmp_path / "big.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REFUSED" in done.stdout, done.stdout
    assert ("does not match" in done.stdout) or ("cannot be rebuilt" in done.stdout), done.stdout
    maxrss_gb = int(done.stdout.split("MAXRSS_KB")[1]) / 2**20
    print(f"\n{width} x {depth}: refused, peak resident memory {maxrss_gb:.2f} GiB")
    assert maxrss_gb < 2, f"{maxrss_gb:.1f} GB resident"


def test_map_location_on_a_missing_device_says_so(tmp_path, tiny_recipe):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = load_recipe(tiny_recipe())
    torch.save({"format": "jepaflow-checkpoint", "recipe": recipe.to_dict(),
                "objective": build_objective(recipe).state_dict()}, tmp_path / "ok.pt")
    with pytest.raises(CheckpointError, match="no CUDA device is visible") as info:
        load_encoder(tmp_path / "ok.pt", map_location="cuda")
    assert "truncated" not in str(info.value) and "map_location='cpu'" in info.value.fix
    with pytest.raises(JepaflowError, match="not a device"):
        load_encoder(tmp_path / "ok.pt", map_location="gpu0")
    assert load_encoder(tmp_path / "ok.pt", map_location="cpu") is not None


def test_a_stored_recipe_is_checked_like_any_recipe(tmp_path, tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    state = build_objective(recipe).state_dict()
    raw = recipe.to_dict()
    deep: dict = {}
    node = deep
    for _ in range(100):  # nesting far past any recipe
        node["a"] = {}
        node = node["a"]
    for bad in ({**raw, "optim": "fast"}, {**raw, "encoder": {**raw["encoder"], "depth": 2**70}},
                {**raw, "probe": deep}):
        torch.save({"format": "jepaflow-checkpoint", "recipe": bad, "objective": state}, tmp_path / "b.pt")
        with pytest.raises(CheckpointError, match="cannot be rebuilt"):
            load_encoder(tmp_path / "b.pt")
    yaml.safe_dump(raw)  # the resolved recipe itself stays plain YAML

"""``jepaflow run --resume`` from damaged or mismatched checkpoints: one message naming the file and what is
wrong, exit 2, and the checkpoint is left as it was."""

from __future__ import annotations

import pytest
import torch
from clikit import assert_one_message, invoke


def damage(ckpt: dict) -> dict[str, tuple[dict, str]]:
    """name -> (damaged checkpoint, expected fragment): the issue's cases, and their neighbours."""
    def without(key):
        return {k: v for k, v in ckpt.items() if k != key}

    objective = dict(ckpt["objective"])
    first = next(iter(objective))
    wrong_shape = {**objective, first: torch.zeros(3)}
    nan = {k: v.clone() for k, v in objective.items()}
    key = next(k for k, v in nan.items() if v.is_floating_point())
    nan[key].view(-1)[0] = float("nan")
    groups = ckpt["optimizer"]["param_groups"]
    return {
        "no optimizer": (without("optimizer"), "no 'optimizer' entry"),
        "no rng": (without("rng"), "no 'rng' entry"),
        "no step": (without("step"), "'step' is None"),
        'step "abc"': ({**ckpt, "step": "abc"}, "'step' is 'abc', not a whole number"),
        "step -5": ({**ckpt, "step": -5}, "'step' is -5, below 0"),
        "step 2.5": ({**ckpt, "step": 2.5}, "not a whole number"),
        "step past the end": ({**ckpt, "step": 10**9}, "past the end of this run"),
        "recipe as a string": ({**ckpt, "recipe": "seed: 0"}, "'recipe' is a str"),
        "objective as a list": ({**ckpt, "objective": [1, 2]}, "'objective' is a list"),
        "weights of another model": ({**ckpt, "objective": wrong_shape}, "wrong shape"),
        "missing weights": ({**ckpt, "objective": {k: v for k, v in objective.items() if k != first}},
                            "missing"),
        "non-finite weights": ({**ckpt, "objective": nan}, "NaN or infinite"),
        "rng of the wrong size": ({**ckpt, "rng": {"torch": torch.zeros(7, dtype=torch.uint8)}}, "bytes"),
        "optimizer of another model": ({**ckpt, "optimizer": {"state": {}, "param_groups": groups[:1]}},
                                       "optimizer state does not fit"),
        "optimizer not a state dict": ({**ckpt, "optimizer": {"a": 1}}, "not an optimizer state_dict"),
        "not jepaflow's": ({"format": "other"}, "not a jepaflow checkpoint"),
    }


def test_resume_from_damaged_checkpoints(recipe_file, tmp_path):
    recipe = recipe_file({"train": {"max_steps": 2}})
    assert invoke("run", recipe).exit_code == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    cases = damage(ckpt)
    assert len(cases) == 16
    for name, (bad, fragment) in cases.items():
        torch.save(bad, last)
        written = last.read_bytes()
        err = assert_one_message(invoke("run", recipe, "--resume", "--set", "train.max_steps=4"), fragment)
        assert str(last) in err, name
        assert last.read_bytes() == written, f"{name}: the checkpoint was changed"
    torch.save(ckpt, last)  # and the intact one still resumes
    assert invoke("run", recipe, "--resume", "--set", "train.max_steps=4").exit_code == 0
    assert torch.load(last, weights_only=True)["step"] == 4


def test_truncated_and_garbage_checkpoints(recipe_file, tmp_path):
    recipe = recipe_file({"train": {"max_steps": 1}})
    assert invoke("run", recipe).exit_code == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    data = last.read_bytes()
    for bad, fragment in [(data[: len(data) // 2], "damaged or truncated"), (b"", "empty"),
                          (b"\x00" * 1000, "damaged or truncated"), (b"PK\x03\x04" + b"x" * 100, "damaged")]:
        last.write_bytes(bad)
        assert_one_message(invoke("run", recipe, "--resume"), fragment)
        assert last.read_bytes() == bad


def test_resume_with_a_folder_in_place_of_the_checkpoint(recipe_file, tmp_path):
    recipe = recipe_file({"train": {"max_steps": 1}})
    assert invoke("run", recipe).exit_code == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.unlink()
    last.mkdir()
    assert_one_message(invoke("run", recipe, "--resume"), "last.pt")


@pytest.mark.parametrize("field", ["optim.lr=0.5", "encoder.depth=3"])
def test_resume_with_another_recipe_is_refused(recipe_file, field):
    recipe = recipe_file({"train": {"max_steps": 1}})
    assert invoke("run", recipe).exit_code == 0
    assert_one_message(invoke("run", recipe, "--resume", "--set", field), "differs from the one the run")

"""Every bad recipe of the issue, exactly as reported, through ``jepaflow validate`` (and ``run`` where the
report was "passes validate, crashes run"): one message naming the YAML path, exit 2, no traceback, no hang,
nothing accepted silently."""

from __future__ import annotations

import os
import time

import pytest
import yaml
from clikit import assert_one_message, invoke

from jepaflow.config import MAX_DEPTH, load_recipe
from jepaflow.errors import RecipeError

# ------------------------------------------------------------------------------------------------ file contents


def test_binary_latin1_and_utf16_recipes(tmp_path, recipe_file):
    good = recipe_file().read_text()
    cases = {
        "binary.yaml": (bytes(range(256)) * 8, "not UTF-8 text (byte 0x80"),
        "latin1.yaml": (("# caf\u00e9 recipe\n" + good).encode("latin-1"), "not UTF-8 text (byte 0xe9"),
        "utf16.yaml": (good.encode("utf-16"), "UTF-16"),
        "nul.yaml": (b"seed: 0\x00\n", "U+0000"),
    }
    for name, (data, fragment) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert_one_message(invoke("validate", tmp_path / name), fragment)
    # a UTF-8 byte-order mark is fine
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + good.encode())
    assert invoke("validate", tmp_path / "bom.yaml").exit_code == 0


def test_paths_that_are_not_recipe_files(tmp_path):
    assert_one_message(invoke("validate", tmp_path), "is a folder")
    os.mkfifo(tmp_path / "fifo.yaml")
    assert_one_message(invoke("validate", tmp_path / "fifo.yaml"), "not a regular file")  # would block
    (tmp_path / "huge.yaml").write_bytes(b"#" * (2 << 20))
    assert_one_message(invoke("validate", tmp_path / "huge.yaml"), "a recipe is a small text file")
    assert_one_message(invoke("validate", "a" * 5000), "too long")
    assert_one_message(invoke("validate", tmp_path / "absent.yaml"), "no recipe at")


def test_nesting_20000_deep(tmp_path, recipe_file):
    text = recipe_file().read_text() + "deep: " + "[" * 20000 + "]" * 20000 + "\n"
    (tmp_path / "deep.yaml").write_text(text)
    assert_one_message(invoke("validate", tmp_path / "deep.yaml"), f"nested more than {MAX_DEPTH} levels")
    block = "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n"
    (tmp_path / "deep_block.yaml").write_text(block)
    assert_one_message(invoke("validate", tmp_path / "deep_block.yaml"), "nested more than")
    assert_one_message(invoke("validate", recipe_file(), "--set", "a." * 40 + "b=1"), "levels deep")


def test_huge_integers(tmp_path, recipe_file):
    path = recipe_file()
    (tmp_path / "digits.yaml").write_text(path.read_text() + "\nextra: " + "7" * 5000 + "\n")
    err = assert_one_message(invoke("validate", tmp_path / "digits.yaml"), "extra", "too large")
    assert "7777777777" not in err  # never echoed in full
    assert_one_message(invoke("validate", path, "--set", "seed=" + "9" * 5000), "seed", "too large")
    assert_one_message(invoke("validate", path, "--set", f"seed={2**70}"), "seed", "64 bits")
    assert invoke("validate", path, "--set", f"seed={2**63 - 1}").exit_code == 0


@pytest.mark.parametrize("override,path", [
    ("encoder.mlp_ratio=.inf", "encoder.mlp_ratio"),
    ("optim.betas=[2, 3]", "optim.betas[0]"),
    ("optim.ipe_scale=1e308", "optim.ipe_scale"),
])
def test_values_that_passed_validate_and_crashed_run(recipe_file, override, path):
    recipe = recipe_file()
    assert_one_message(invoke("validate", recipe, "--set", override), path)
    assert_one_message(invoke("run", recipe, "--set", override), path)


def test_an_alias_bomb_is_refused_quickly(tmp_path, recipe_file):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 10):  # 9 levels of 9 aliases: 9**10 strings once expanded
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    text = "\n".join(lines) + "\n" + recipe_file().read_text()
    (tmp_path / "bomb.yaml").write_text(text)
    t0 = time.perf_counter()
    assert_one_message(invoke("validate", tmp_path / "bomb.yaml"), "expands to more than", max_len=2000)
    assert time.perf_counter() - t0 < 10
    # a smaller one (9**4 values, under the limit) under a real field: the message echoes a bounded value
    small = "\n".join(lines[:4]) + "\n" + recipe_file().read_text().replace("seed: 0", "seed: *a3")
    (tmp_path / "bomb2.yaml").write_text(small)
    t0 = time.perf_counter()
    assert_one_message(invoke("validate", tmp_path / "bomb2.yaml"), "seed", "valid integer", max_len=2000)
    assert time.perf_counter() - t0 < 10


def test_tags_and_keys_that_are_not_plain_data(tmp_path, recipe_file):
    base = recipe_file().read_text()
    for extra, fragment in [
        ("evil: !!python/object/apply:os.system ['echo pwned']", "!!python/object/apply:os.system"),
        ("blob: !!binary aGVsbG8=", "!!binary"),
        ("when: 2024-01-01", "!!timestamp"),
        ("custom: !mine 3", "'!mine'"),
        ("? [1, 2]\n: 3", "keys are names"),
        ("1: 2", "keys are names"),
        ("loop: &l [*l]", "contains it"),
    ]:
        (tmp_path / "t.yaml").write_text(base + extra + "\n")
        assert_one_message(invoke("validate", tmp_path / "t.yaml"), fragment)


# ------------------------------------------------------------------------------------------------ accepted silently
SILENT = [
    (field, value)
    for field in ("optim.lr", "optim.final_lr", "optim.weight_decay", "optim.eps", "encoder.init_std",
                  "predictor.init_std", "probe.knn_temperature")
    for value in (".inf", "1e308")
] + [
    ("data.std", "[.nan]"), ("data.std", "[.inf]"), ("data.mean", "[.nan]"), ("optim.betas", "[.nan, .nan]"),
    ("train.batch_size", "true"), ("probe.kinds", "[]"), ("output_dir", "''"), ("optim.start_lr", "-.inf"),
    ("optim.grad_clip", ".nan"), ("masker.target_scale", "[.nan, 0.2]"), ("data.crop_scale", "[.inf, 1]"),
    ("target_updater.momentum_start", ".nan"), ("encoder.drop_path_rate", ".nan"), ("optim.epochs", "1e9"),
    ("train.num_workers", "false"),
]


@pytest.mark.parametrize("field,value", SILENT, ids=[f"{f}={v}" for f, v in SILENT])
def test_values_that_were_accepted_silently(recipe_file, field, value):
    assert_one_message(invoke("validate", recipe_file(), "--set", f"{field}={value}"), field.split(".")[-1])


def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path, recipe_file):
    text = recipe_file().read_text()
    (tmp_path / "dup.yaml").write_text(text.replace("optim:\n", "optim:\n  lr: 0.5\n  lr: 0.1\n", 1))
    err = assert_one_message(invoke("validate", tmp_path / "dup.yaml"), "optim.lr", "given twice")
    assert "lines" in err
    (tmp_path / "dup_top.yaml").write_text(text + "seed: 1\n")
    assert_one_message(invoke("validate", tmp_path / "dup_top.yaml"), "seed", "given twice")
    # merge keys (<<) are not duplicates: overriding a merged key is what they are for
    (tmp_path / "merge.yaml").write_text(text + "base: &b {lr: 0.1}\n")
    assert "given twice" not in invoke("validate", tmp_path / "merge.yaml").stderr


def test_every_echoed_value_is_capped(recipe_file):
    long = "x" * 100_000
    for override in (f"data.name={long}", f"optim.lr={long}", f"{long}=1", f"optim.{long}=1",
                     f"seed=[{', '.join(['1'] * 10_000)}]"):
        assert_one_message(invoke("validate", recipe_file(), "--set", override), max_len=4000)


def test_programmatic_recipes_are_checked_the_same_way(tiny_recipe):
    raw = tiny_recipe()
    loop: list = []
    loop.append(loop)
    for bad, fragment in [({**raw, "seed": 2**70}, "64 bits"), ({**raw, "extra": loop}, "contains itself"),
                          ({**raw, 3: 1}, "keys are names"), ({**raw, "optim": {"lr": float("nan")}}, "finite")]:
        with pytest.raises(RecipeError, match=fragment):
            load_recipe(bad)
    yaml.safe_dump(load_recipe(raw).to_dict())

"""``jepaflow probe`` with bad input: crafted, truncated and non-finite checkpoint files, and a ``probe.json``
place that cannot be written. Each is one ``error:``/``fix:`` message, exit code 2, no traceback; a crafted file
runs no code (it is read with ``weights_only=True`` only, through :mod:`jepaflow.checkpoints`), and a bad output
place is refused before any file is read or any feature computed."""

from __future__ import annotations

import pytest
import torch
import yaml
from clikit import assert_one_message, invoke
from test_checkpoint_safety import crafted_files

from jepaflow.config import load_recipe
from jepaflow.engine.build import build_objective

DATA = "{name: synthetic, image_size: 32, channels: 3, num_train: 64, num_test: 32}"


def probe(*args):
    return invoke("probe", *args, "--data", DATA, "--probe", "knn", "--no-cache")


@pytest.fixture
def no_features(monkeypatch):
    """Makes computing any feature a test failure."""
    import jepaflow.probes.evaluate as evaluate

    def fail(*args, **kwargs):
        raise AssertionError("features were computed")

    monkeypatch.setattr(evaluate, "extract_features", fail)


@pytest.mark.parametrize("layout", ["declares-jepaflow-format", "in-a-jepaflow-state-dict", "official-layout",
                                    "bare-object", "in-a-state-dict"])
@pytest.mark.parametrize("as_run_folder", [False, True])
def test_a_crafted_file_runs_no_code(tmp_path, layout, as_run_folder, no_features):
    file, marker = crafted_files(tmp_path)[layout]
    source = file
    if as_run_folder:  # the same file as a run folder's last checkpoint
        source = tmp_path / "run"
        (source / "checkpoints").mkdir(parents=True)
        file.rename(source / "checkpoints" / "last.pt")
    assert_one_message(probe(source), "never unpickles")
    assert not marker.exists()


def jepaflow_checkpoint(tiny_recipe, path, poison: str | None = None) -> str:
    """A real jepaflow checkpoint of the tiny recipe at ``path``; ``poison``: "nan" or "inf" in one target
    encoder weight. Returns that weight's name."""
    recipe = load_recipe(tiny_recipe())
    state = build_objective(recipe).state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point() and "target" in k)
    if poison is not None:
        state[key] = state[key].clone()
        state[key].view(-1)[3] = float(poison)
    torch.save({"format": "jepaflow-checkpoint", "version": 1, "recipe": recipe.to_dict(), "objective": state,
                "step": 1}, path)
    return key


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_a_checkpoint_with_a_non_finite_weight_is_refused(tmp_path, tiny_recipe, poison, no_features):
    key = jepaflow_checkpoint(tiny_recipe, tmp_path / "bad.pt", poison)
    err = assert_one_message(probe(tmp_path / "bad.pt"), "NaN or infinite", key)
    assert "fix:" in err
    # the official layout goes through jepaflow.load_encoder, which checks the same
    state = torch.load(tmp_path / "bad.pt", weights_only=True)["objective"]
    enc = {k[len("target_encoder."):]: v for k, v in state.items() if k.startswith("target_encoder.")}
    torch.save({"encoder": enc, "target_encoder": enc}, tmp_path / "bad.pth.tar")
    assert_one_message(probe(tmp_path / "bad.pth.tar"), "NaN or infinite")


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_a_truncated_checkpoint_is_refused(tmp_path, tiny_recipe, keep, no_features):
    jepaflow_checkpoint(tiny_recipe, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    (tmp_path / "cut.pt").write_bytes(data[:n])
    err = assert_one_message(probe(tmp_path / "cut.pt"), "cut.pt")
    assert "fix:" in err


def test_an_intact_checkpoint_of_the_same_kind_is_probed(tmp_path, tiny_recipe):
    """The files above fail for what was done to them: the intact file probes (so the tests can fail)."""
    jepaflow_checkpoint(tiny_recipe, tmp_path / "good.pt")
    result = probe(tmp_path / "good.pt", "--output", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.json").is_file()


def test_a_damaged_run_recipe_is_one_message(tmp_path, tiny_recipe, no_features):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    jepaflow_checkpoint(tiny_recipe, run / "checkpoints" / "last.pt")
    (run / "recipe.yaml").write_text("data: [unclosed\n")
    assert_one_message(probe(run), "recipe.yaml")
    (run / "recipe.yaml").write_text(yaml.safe_dump(["not", "a", "mapping"]))
    assert_one_message(probe(run), "not a recipe")


def output_cases(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "out" / "probe.json").mkdir(parents=True)
    return {
        "through a file": (tmp_path / "a_file" / "probe.json", "a_file"),
        "probe.json is a folder": (tmp_path / "out", "is a folder"),
        "not .json": (tmp_path / "results.txt", ".json"),
        "NUL byte": ("bad\0name.json", "NUL"),
        "empty": ("", "empty"),
    }


@pytest.mark.parametrize("case", ["through a file", "probe.json is a folder", "not .json", "NUL byte",
                                  "empty"])
def test_an_unwritable_output_is_refused_before_anything_is_read(tmp_path, tiny_recipe, monkeypatch, case,
                                                                  no_features):
    import jepaflow.probes.sources as sources

    jepaflow_checkpoint(tiny_recipe, tmp_path / "good.pt")
    read = []
    real = sources.inspect_source
    monkeypatch.setattr(sources, "inspect_source", lambda spec: read.append(spec) or real(spec))
    output, fragment = output_cases(tmp_path)[case]
    err = assert_one_message(probe(tmp_path / "good.pt", "--output", output), fragment)
    assert "fix:" in err and read == []


def test_a_run_folder_whose_probe_json_cannot_be_written_is_refused_before_features(tmp_path, tiny_recipe,
                                                                                    no_features):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    jepaflow_checkpoint(tiny_recipe, run / "checkpoints" / "last.pt")
    (run / "probe.json").mkdir()  # the default output, the run folder's probe.json, is a folder
    assert_one_message(probe(run), "probe.json", "is a folder")

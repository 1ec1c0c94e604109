"""`jepaflow export`: files written, the summary printed, and user errors as one message with exit code 2."""

from __future__ import annotations

import json

from test_export import SIMCLR_CNN, write_run
from typer.testing import CliRunner

from jepaflow.cli.main import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def test_export_writes_the_files_and_says_how_to_load_them_in_timm(tmp_path):
    run, _ = write_run(tmp_path)
    out = tmp_path / "export"
    result = invoke("export", str(run), "--output", str(out), "--which", "context")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "encoder.safetensors"]
    info = json.loads((out / "encoder.json").read_text())
    assert info["source"]["which"] == "context" and info["timm"]["file"] == "encoder.safetensors"
    assert "exported the vit encoder (width 48, patch 8, grid 4x4)" in result.output
    assert "timm.create_model('vit_tiny_patch16_224', pretrained=True" in result.output


def test_export_user_errors_exit_2_without_traceback(tmp_path):
    run, _ = write_run(tmp_path, SIMCLR_CNN)
    result = invoke("export", str(run), "--output", str(tmp_path / "x"), "--timm")
    assert result.exit_code == 2
    assert "error: the 'timm_cnn' encoder (jepaflow.encoders.timm_cnn:TimmCNNEncoder) has no timm" in result.output
    assert "fix: export without --timm" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
    # without --timm the same encoder exports its weights and description
    result = invoke("export", str(run), "--output", str(tmp_path / "y"))
    assert result.exit_code == 0 and "no timm equivalent for this encoder" in result.output
    for args in (["export", str(tmp_path / "missing"), "-o", str(tmp_path / "z")],
                 ["export", str(run), "-o", str(tmp_path / "y")],  # already exported there
                 ["export", str(run), "-o", str(tmp_path / "z"), "--which", "student"]):
        result = invoke(*args)
        assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output, args

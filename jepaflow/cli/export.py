"""``jepaflow export RUN_OR_CHECKPOINT --output DIR [--which ROLE] [--timm/--no-timm]`` (logic in
:mod:`jepaflow.export`). Cheap to import: torch is imported when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    source: Annotated[Path, typer.Argument(metavar="RUN_OR_CHECKPOINT",
                                           help="jepaflow run folder or checkpoint, or an official I-JEPA checkpoint",
                                           show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder to write into (created; nothing is "
                                         "overwritten)", show_default=False)],
    which: Annotated[str | None, typer.Option(help="encoder role, e.g. context or target (default: the "
                                              "representation encoder; official checkpoints: target)")] = None,
    timm: Annotated[bool | None, typer.Option("--timm/--no-timm", help="also write timm VisionTransformer weights "
                                              "(default: for ViT encoders; --timm: required, an error otherwise)",
                                              show_default=False)] = None,
) -> None:
    """Export an encoder: safetensors weights, encoder.json (its architecture) and, for ViTs, timm weights."""
    from jepaflow.cli.main import _console, _user_errors

    with _user_errors():
        from jepaflow.export import export_encoder
        from jepaflow.outputs import check_output_dir

        check_output_dir(output, "--output folder")  # before reading the checkpoint

        info = export_encoder(source, output, which=which, timm_weights=timm)
    out = _console()
    enc = info["encoder"]
    out.print(f"exported the {enc['name'] or enc['class']} encoder (width {info['embed_dim']}, patch "
              f"{info['patch_size']}, grid {info['grid_size'][0]}x{info['grid_size'][1]}) to {output}/")
    out.print(f"  {info['weights']}, encoder.json" + (f", {info['timm']['file']} (timm)" if info["timm"] else ""))
    if info["timm"]:
        t = info["timm"]
        out.print(f"  timm: timm.create_model({t['model_name']!r}, pretrained=True, pretrained_cfg_overlay="
                  f"dict(file='{output}/{t['file']}'), **encoder.json['timm']['kwargs'])", soft_wrap=True)
    else:
        out.print("  no timm equivalent for this encoder (timm export covers the vit and timm_vit encoders)")

#!/usr/bin/env python
"""The GPU benchmark suite: I-JEPA ViT-B/16 and ViT-H/14 at 224 px in bf16 on one GPU, unattended, in ~4 minutes.

Runs ``benchmarks/train_step.py`` once per configuration, each in its own process with its own time limit (an
out-of-memory error, a crash or a slow compile costs that configuration only), printing as it goes and writing
every table, then a summary, to stdout and to ``--out`` (default ``$OUT/gpu_bench.md``, else ``gpu_bench.md``).

Configurations, in order (later ones are skipped when the ``--budget`` would be exceeded):

1. ``vitb16``: ViT-B/16, batch 128: jepaflow (recipe defaults: fused AdamW) against jepaflow with torch's default
   AdamW (foreach on CUDA) and, with ``--reference``, the official code; FLOPs and MFU.
2. ``vith14``: ViT-H/14 (predictor 384 x 12, as the official ViT-H configs), batch 64; FLOPs and MFU.
3. ``vitb16-compile``: ViT-B/16, batch 128: ``train.compile=true`` against eager, interleaved.
4. ``vith14-ckpt``: ViT-H/14, batch 128 (the official per-GPU batch), ``train.grad_checkpointing=true``.
5. ``vitb16-one-sequence``: ViT-B/16, batch 128: the one-sequence predictor (a deviation from the official
   computation, ``predictor.target_layout=one_sequence``) against the official layout.
6. ``vith14-optim``: ViT-H/14's AdamW (fused, foreach, for-loop) and EMA updates alone (``optim_step.py``).
7. ``vith14-compile``: ViT-H/14, batch 64, compiled against eager (only if the budget allows).

Needs: a CUDA GPU; torch (2.11 tested by the coordinator's plan), timm and its dependencies (torchvision,
huggingface_hub, safetensors), pydantic (and pydantic_core, annotated_types, typing_extensions,
typing_inspection), pyyaml, numpy, pillow. jepaflow is found from this checkout: when it is not pip-installed, its
entry points (how it finds its own plugins) are declared to Python through a temporary ``.dist-info`` made from
``pyproject.toml``, so no install step is needed. ``--reference PATH``: a checkout of facebookresearch/ijepa (the
folder that holds ``src/``), optional.

    python benchmarks/gpu_suite.py --reference /path/to/ijepa                 # on the GPU machine, ~4 min
    python benchmarks/gpu_suite.py --device cpu --tiny --reference /tmp/ijepa  # the script's logic, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: name, script, its arguments (besides device, precision and outputs), time limit (s); the first also gets
#: --reference when given
VITB = ["--size", "base", "--img", "224", "--patch", "16", "--batch", "128"]
VITH = ["--size", "huge", "--img", "224", "--patch", "14", "--pred-depth", "12"]
CONFIGS: list[tuple[str, str, list[str], int]] = [
    ("vitb16", "train_step.py", [*VITB, "--flops", "--variant", "jepaflow:",
                                 "--variant", "foreach-adamw:train.fused_optimizer=false",
                                 "--rounds", "3", "--steps", "3", "--warmup", "3"], 70),
    ("vith14", "train_step.py", [*VITH, "--batch", "64", "--flops", "--rounds", "3", "--steps", "3",
                                 "--warmup", "2"], 60),
    ("vitb16-compile", "train_step.py", [*VITB, "--flops", "--variant", "eager:",
                                         "--variant", "compiled:train.compile=true",
                                         "--rounds", "2", "--steps", "3", "--warmup", "3"], 100),
    ("vith14-ckpt", "train_step.py", [*VITH, "--batch", "128", "--flops",
                                      "--variant", "checkpointed:train.grad_checkpointing=true",
                                      "--rounds", "2", "--steps", "3", "--warmup", "2"], 60),
    ("vitb16-one-sequence", "train_step.py", [*VITB, "--flops", "--variant", "per-block:", "--variant",
                                              "one-sequence:predictor.target_layout=one_sequence",
                                              "--rounds", "3", "--steps", "3", "--warmup", "2"], 45),
    ("vith14-optim", "optim_step.py", [*VITH, "--rounds", "4", "--steps", "2"], 40),
    ("vith14-compile", "train_step.py", [*VITH, "--batch", "64", "--flops", "--variant", "eager:",
                                         "--variant", "compiled:train.compile=true",
                                         "--rounds", "2", "--steps", "3", "--warmup", "3"], 150),
]
#: CPU stand-ins for --tiny: same structure, sizes that run in seconds
TINY = {"--size": "tiny", "--img": "32", "--patch": "4", "--batch": "8", "--pred-depth": "2"}
TINY_EXTRA = ["--width", "64", "--depth", "2", "--heads", "2", "--pred-width", "32", "--threads", "1"]
#: seconds a timed-out configuration gets to finish its step and print its partial table (SIGTERM, then SIGKILL)
GRACE_S = 20


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ environment
def entry_point_shim() -> str | None:
    """A folder holding ``jepaflow-<v>.dist-info`` with the entry points of ``pyproject.toml``, for a checkout
    that is not pip-installed (jepaflow finds its built-in plugins through entry points). None if installed."""
    import importlib.metadata as md

    if any(ep.name == "vit" for ep in md.entry_points(group="jepaflow.encoders")):
        return None
    text = (ROOT / "pyproject.toml").read_text()
    lines, group = [], None
    for raw in text.splitlines():
        line = raw.strip()
        head = re.fullmatch(r'\[project\.entry-points\."([\w.]+)"\]', line)
        if head:
            group = head.group(1)
            lines.append(f"[{group}]")
            continue
        if line.startswith("["):
            group = None
        elif group and "=" in line and not line.startswith("#"):
            name, _, target = line.partition("=")
            target = target.strip().strip('"')
            lines.append(f"{name.strip()} = {target}")
    folder = Path(tempfile.mkdtemp(prefix="jepaflow-meta-"))
    info = folder / "jepaflow-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jepaflow\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return str(folder)


def preflight(args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """The environment for the child processes, and lines describing the machine and software."""
    env = dict(os.environ)
    paths = [str(ROOT)]
    shim = entry_point_shim()
    if shim:
        paths.insert(0, shim)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    lines = []
    probe = ("import torch, timm, pydantic, yaml, numpy, jepaflow, jepaflow.engine.trainer, json; "
             "from jepaflow.registry import default_registry as r; r().get('encoder', 'vit'); "
             "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'timm': timm.__version__, "
             "'pydantic': pydantic.VERSION, 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() "
             "else None}))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    if res.returncode != 0:
        raise SystemExit("preflight failed (missing package?):\n" + res.stderr[-2000:])
    info = json.loads(res.stdout.strip().splitlines()[-1])
    lines.append(f"- preflight: {info}" + ("; jepaflow entry points from pyproject.toml (not installed)" if shim
                                           else ""))
    if args.device == "cuda" and not info["gpu"]:
        raise SystemExit("no CUDA device visible (pass --device cpu --tiny to check the script on a CPU)")
    return env, lines


# ------------------------------------------------------------------------------------------------ one config
def config_args(base: list[str], args: argparse.Namespace, reference: bool) -> list[str]:
    out = list(base)
    if args.tiny:
        for i, a in enumerate(out[:-1]):
            if a in TINY:
                out[i + 1] = TINY[a]
        out += TINY_EXTRA
    out += ["--device", args.device, "--precision", "bf16" if args.device == "cuda" else "fp32"]
    if args.reference and reference:
        out += ["--reference", args.reference]
    if args.peak_tflops:
        out += ["--peak-tflops", str(args.peak_tflops)]
    return out


def run_config(name: str, script: str, argv: list[str], limit: float,
               env: dict[str, str]) -> tuple[str, dict | None, str]:
    """Run one benchmark script; returns (markdown, summary JSON or None, status)."""
    with tempfile.TemporaryDirectory() as tmp:
        md, js = Path(tmp) / "t.md", Path(tmp) / "t.json"
        # a fresh compile cache per configuration: one killed mid-compile must not leave half-written kernels for
        # the next
        env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        cmd = [sys.executable, str(HERE / script), *argv, "--out", str(md)]
        if script == "train_step.py":
            cmd += ["--json", str(js)]
        log(f"\n## {name}: timeout {limit:.0f} s\n`python benchmarks/{script} {' '.join(argv)}`")
        t0 = time.time()
        tail: list[str] = []
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    cwd=ROOT, start_new_session=True)

            def pump() -> None:  # a thread, so that the time limit holds even when the child prints nothing
                assert proc.stdout is not None
                for line in proc.stdout:
                    tail.append(line.rstrip("\n"))
                    if line.startswith("  ") or "failed" in line or "Error" in line:
                        log(f"    {line.strip()}")  # progress lines of train_step.py

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                proc.wait(timeout=limit)
                status = "ok" if proc.returncode == 0 else f"exit code {proc.returncode}"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)  # train_step.py ends its step and reports what it has
                try:
                    proc.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                status = f"timed out after {limit:.0f} s"
            reader.join(timeout=5)
        except Exception as exc:  # the suite itself must go on
            return "", None, f"could not run: {type(exc).__name__}: {exc}"
        elapsed = time.time() - t0
        text = md.read_text() if md.exists() else ""
        summary = json.loads(js.read_text())["summary"] if js.exists() else None
        if status != "ok":
            err = "\n".join(tail[-15:])
            text += f"\n**{name}: {status}** (after {elapsed:.0f} s). Last output:\n\n```\n{err}\n```\n"
        log(text)
        log(f"[{name}: {status}, {elapsed:.0f} s]")
        return text, summary, status


def summary_table(results: list[tuple[str, dict | None, str]]) -> list[str]:
    head = ["config", "side", "img/s", "step ms", "x baseline", "peak MiB", "TFLOP/s", "MFU", "status"]
    rows = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 3) + "---|"]
    for name, summary, status in results:
        if not summary:
            rows.append(f"| {name} | - | - | - | - | - | - | - | {status} |")
            continue
        base = summary.get("_meta", {}).get("base")
        for side, r in summary.items():
            if side == "_meta":
                continue
            if "step_ms" not in r:
                rows.append(f"| {name} | {side} | - | - | - | - | - | - | failed: {r.get('error')} |")
                continue
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
            tf = f"{r['tflops']:.1f}" if r.get("tflops") is not None else "-"
            rows.append(f"| {name} | {side} | {r['img_s']:,.1f} | {r['step_ms']:,.1f} | "
                        f"{r['x_base_step']:.2f} (vs {base}) | {r['peak_mib']:,.0f} | {tf} | {mfu} | {status} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", help="checkout of facebookresearch/ijepa (folder with src/) for the ViT-B/16 row")
    p.add_argument("--budget", type=float, default=235.0, help="seconds for the whole suite (default 235)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny CPU-sized models (to check the script)")
    p.add_argument("--only", nargs="*", help="run only these configurations")
    p.add_argument("--peak-tflops", type=float, help="GPU peak for MFU (train_step.py's default: 989, H100/H200)")
    p.add_argument("--out", help="markdown output (default: $OUT/gpu_bench.md, else ./gpu_bench.md)")
    args = p.parse_args(argv)
    if args.reference:
        args.reference = str(Path(args.reference).resolve())
    out = Path(args.out or (Path(os.environ["OUT"]) / "gpu_bench.md" if os.environ.get("OUT") else "gpu_bench.md"))
    start = time.time()
    t_pre = time.time()
    env, lines = preflight(args)
    log("# jepaflow GPU benchmark suite\n")
    log("\n".join(lines) + f"\n- preflight took {time.time() - t_pre:.0f} s; budget {args.budget:.0f} s")
    sections = ["# jepaflow GPU benchmark suite", "", *lines, ""]
    results = []
    for k, (name, script, base, limit) in enumerate(CONFIGS):
        if args.only and name not in args.only:
            continue
        remaining = args.budget - (time.time() - start) - GRACE_S
        if remaining < min(limit, 40):
            log(f"\n## {name}: skipped ({remaining:.0f} s of the budget left)")
            results.append((name, None, f"skipped ({remaining:.0f} s left)"))
            continue
        argv_k = config_args(base, args, reference=k == 0)
        if script != "train_step.py":  # optim_step.py: no precision (parameters and updates are fp32)
            i = argv_k.index("--precision")
            del argv_k[i:i + 2]
        text, summary, status = run_config(name, script, argv_k, min(limit, remaining), env)
        sections.append(text)
        results.append((name, summary, status))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(sections + ["## Summary", "", *summary_table(results), ""]))  # after each config
    table = summary_table(results)
    log("\n## Summary\n\n" + "\n".join(table))
    log(f"\nwritten to {out}; total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

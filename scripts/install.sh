#!/usr/bin/env bash
# Installs jepaflow and everything its tests need into ./.venv (idempotent; run from anywhere).
#   torch/torchvision are pinned to the versions this project is tested with (a CUDA build that also runs on
#   CPU); where the machine keeps those wheels on disk pip takes them from there, and an unpinned install could
#   resolve to a newer release and download several GB.
#   Fashion-MNIST comes from Debian's dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # not fatal: without it only the Fashion-MNIST tests skip (saying why)
    { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
      || echo "note: could not install dataset-fashion-mnist; its tests will skip" >&2
  else
    echo "note: Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist); its tests will skip" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# (pip's notes about absent local indexes are filtered out; a failing pip still fails the script: pipefail)
.venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 | { grep -v "is ignored" || true; }
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | { grep -v "is ignored" || true; }
.venv/bin/python -c "import torch, timm, jepaflow; print('jepaflow', jepaflow.__version__, '| torch', torch.__version__, '| timm', timm.__version__)"

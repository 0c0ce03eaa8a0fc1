#!/usr/bin/env python3
"""Apply cosmos-hal's upstream fixes (patches/*.toml) to NVIDIA cosmos-predict2.

    python tools/patch.py list
    python tools/patch.py check|apply|revert --target PATH [--fix ID] [--force]

PATH is a cosmos-predict2 git checkout, a site-packages folder holding cosmos_predict2/, or
the package folder itself. The logic lives in cosmos_hal.patching; see docs/patches.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cosmos_hal.patching.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""A built wheel (not the editable checkout) holds the mapped backends and the patch files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.mark.slow
def test_wheel_ships_backends_and_patches_and_the_patch_tool_finds_them(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    REPO, "-w", str(wheels)], check=True, capture_output=True, cwd=tmp_path, timeout=300)
    (wheel,) = wheels.glob("cosmos_hal-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cosmos_hal/backends/npu.py" in names
    assert "cosmos_hal/patches/01-ema-deterministic-init.toml" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import cosmos_hal, os; from cosmos_hal.patching.spec import default_patch_dir; "
             "d = default_patch_dir(); print(cosmos_hal.__file__); print(d); "
             "print(sorted(f for f in os.listdir(d) if f.endswith('.toml')))")
    env = {k: v for k, v in os.environ.items() if k != "COSMOS_HAL_PATCHES"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120).stdout.splitlines()
    assert out[0].startswith(str(site)), "imported the checkout, not the wheel"
    assert out[1].startswith(str(site)) and "01-ema-deterministic-init.toml" in out[2]

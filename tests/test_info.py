"""`python -m cosmos_hal info`: text and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

from cosmos_hal import info
from conftest import REPO, fake_npu_env


def test_info_json_reports_choice_devices_versions_and_kernels():
    out = subprocess.run([sys.executable, "-m", "cosmos_hal", "info", "--json", "--backend", "cpu"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    report = json.loads(out)
    assert report["backend"] == "cpu" and report["collective"] == "gloo"
    assert report["versions"]["torch"]
    assert set(report["probes"]) == {"npu", "cuda", "cpu"}
    for op, k in report["kernels"].items():
        assert k["chosen"] in k["available"], op


def test_info_text_names_backend_and_reason():
    text = info.format_text(info.collect("cpu"))
    assert text.splitlines()[0].startswith("backend      cpu (requested by --backend")
    assert "collective   gloo" in text


def test_info_under_npu_emulator_reports_hccl_and_torch_npu_version():
    out = subprocess.run([sys.executable, "-m", "cosmos_hal", "info", "--json"], env=fake_npu_env(),
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    report = json.loads(out)
    assert report["backend"] == "npu" and report["collective"] == "hccl"
    assert report["versions"]["torch_npu"].endswith("emulated")
    assert report["device_count"] == 8


def test_info_with_unavailable_backend_exits_nonzero_with_message():
    proc = subprocess.run([sys.executable, "-m", "cosmos_hal", "info", "--backend", "npu"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "npu backend, but it is not available" in proc.stderr

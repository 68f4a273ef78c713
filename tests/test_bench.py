import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_bench_runs_offline_and_writes_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/bench.py",
            "--width",
            "0.25",
            "--images",
            "256",
            "--batch-size",
            "32",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--workers",
            "0",
            "--eval-images",
            "64",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for key in ("plain_img_s", "resattn_img_s", "speedup", "resattn_gflops", "peak_gflops", "eval_img_s"):
        assert result[key] > 0, key
    assert result["speedup"] == result["resattn_img_s"] / result["plain_img_s"]
    assert 0.05 < result["gflop_per_image"] < 0.2  # width 0.25: about 1.15 / 16 GFLOP per image per step
    assert "images/s" in proc.stdout and "speed-up" in proc.stdout


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_bench_times_a_resnet_with_any_attention(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/bench.py",
            "--model",
            "resnet",
            "--depth",
            "20",
            "--attention",
            "eca",
            "--pattern",
            "p4",
            "--width",
            "0.25",
            "--images",
            "128",
            "--batch-size",
            "16",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--skip-plain",
            "--compile",
            "false",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert (result["model"], result["depth"], result["attention"], result["pattern"]) == ("resnet", 20, "eca", "p4")
    # ResNet-20 takes about 41 MMAC forward, so about 0.25 GFLOP forward and backward; width 0.25 a sixteenth
    assert 0.008 < result["gflop_per_image"] < 0.03 and result["resattn_img_s"] > 0
    assert "ResNet-20" in proc.stdout


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_bench_times_fused_members_with_the_trainers_step(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/bench.py",
            "--members",
            "3",
            "--width",
            "0.25",
            "--images",
            "128",
            "--batch-size",
            "16",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--skip-plain",
            "--compile",
            "false",
            "--eval-images",
            "32",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["members"] == 3 and result["resattn_precision"] == "fp32" and result["resattn_img_s"] > 0
    assert "members" in proc.stdout

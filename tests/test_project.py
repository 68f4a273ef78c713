"""What docs/development.md promises about the project's own test runs."""

import subprocess
import sys

from conftest import ROOT


def collected(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args, "tests/test_real_data.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout.strip().splitlines()[-1]


def test_slow_tests_are_left_out_by_default_and_run_in_ci():
    assert "deselected" in collected() and "no tests collected" in collected()  # test_real_data is slow
    assert "deselected" not in collected("-m", "slow")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest\n" in ci or "python -m pytest " in ci
    assert "python -m pytest -m slow" in ci

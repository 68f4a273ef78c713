"""Every piece of a run names the code that trained it (resattn.provenance); the report and study status say when
an arm mixes code."""

import hashlib
import io
import json
import signal
import subprocess
from importlib.metadata import version

import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console
from test_report import fake_run

from conftest import ROOT, TINY
from resattn import engine, provenance, report, study
from resattn.errors import Interrupted

GATE = """
import torch
import torch.nn as nn


class Gate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, v):
        return v * self.scale{edit}
"""


def make(*overrides: str):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=[*TINY, "trainer.compile=false", "trainer.epochs=1", *overrides])


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def stopped_after_one_step(cfg, run_dir):
    with pytest.raises(Interrupted):
        engine.train(cfg, run_dir, [signal.SIGTERM])  # a stop already asked for: it saves after the first step


def test_each_piece_names_its_code_and_the_libraries_that_compute(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(provenance, "commit", lambda: ("a" * 40, False))
    stopped_after_one_step(make(), run)
    monkeypatch.setattr(provenance, "commit", lambda: ("b" * 40, True))  # the code moved before the second piece
    done = engine.train(make(), run)
    first, second = done["pieces"]
    assert (first["code"], first["commit"], first["dirty"]) == ("git aaaaaaaaaaaa", "a" * 40, False)
    assert second["code"] == f"git bbbbbbbbbbbb+dirty source {provenance.source_hash()[:12]}"
    assert done["code"] == second["code"]  # the summary's own keys are the last piece's
    for piece in (first, second):
        assert (piece["timm_version"], piece["hydra_version"]) == (version("timm"), version("hydra-core"))
        assert piece["memory_format"] == "channels_last" and piece["fused"] is False
        assert "custom_source_hash" not in piece  # a built-in module is in the source hash already


def test_the_commit_is_the_checkout_s_own_and_dirty_when_src_or_configs_differ():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    provenance.commit.cache_clear()
    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
    assert provenance.commit() == (
        git("rev-parse", "HEAD"),
        bool(git("status", "--porcelain", "--untracked-files=all", "--", "src", "configs")),
    )


def test_without_git_the_source_hash_names_the_code(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "CHECKOUT", tmp_path)  # a copy of the code without .git
    provenance.commit.cache_clear()
    try:
        assert provenance.commit() == (None, None)
        assert provenance.code_identity({"name": "cbam"})["code"] == f"source {provenance.source_hash()[:12]}"
    finally:
        provenance.commit.cache_clear()


def test_the_source_hash_changes_with_any_file_and_not_with_where_the_tree_is(tmp_path):
    trees = [tmp_path / name for name in ("one", "two", "three")]
    for tree, text in zip(trees, ("x = 1\n", "x = 1\n", "x = 2\n")):
        (tree / "pkg").mkdir(parents=True)
        (tree / "pkg" / "a.py").write_text(text)
    one, two, three = (provenance.hash_files(list(t.rglob("*.py")), t) for t in trees)
    assert one == two != three


def test_a_custom_module_s_source_file_is_hashed_in_each_piece(tmp_path, monkeypatch):
    module = tmp_path / "piecegate.py"
    module.write_text(GATE.format(edit=""))
    monkeypatch.syspath_prepend(str(tmp_path))
    custom = ["attention=custom", "attention._target_=piecegate.Gate", "pattern=p1"]
    run = tmp_path / "run"
    stopped_after_one_step(make(*custom), run)
    module.write_text(GATE.format(edit=" * 1.0  # edited between pieces"))
    first, second = engine.train(make(*custom), run)["pieces"]
    assert first["custom_source_hash"] == hashlib.sha256(GATE.format(edit="").encode()).hexdigest()[:16]
    assert second["custom_source_hash"] == hashlib.sha256(module.read_bytes()).hexdigest()[:16]
    assert first["custom_source_hash"] != second["custom_source_hash"]


def coded_run(run_dir, seed: int, codes: list[str]):
    """A completed p1 run whose pieces ran `codes`."""
    pieces = [{"code": c, "device_type": "cpu"} for c in codes]
    fake_run(run_dir, "p1", seed, summary={"pieces": pieces, **pieces[-1]})


def test_the_report_and_study_status_say_when_an_arm_mixes_code(tmp_path):
    coded_run(tmp_path / "pattern=p1,seed=0", 0, ["git aaaaaaaaaaaa"])
    coded_run(tmp_path / "pattern=p1,seed=1", 1, ["git aaaaaaaaaaaa", "git bbbbbbbbbbbb"])
    md = report.write_report([tmp_path], console=Console(file=io.StringIO(), width=300)).read_text()
    (line,) = [line for line in md.splitlines() if "pools runs with different" in line]
    assert "code (git aaaaaaaaaaaa, git bbbbbbbbbbbb)" in line
    assert study.code_lines(tmp_path) == [
        "code: 2 versions: git aaaaaaaaaaaa (2 pieces), git bbbbbbbbbbbb (1 piece)",
        "pattern=p1: mixes code git aaaaaaaaaaaa, git bbbbbbbbbbbb",
    ]


def test_study_status_names_the_one_code_of_a_study(tmp_path):
    coded_run(tmp_path / "pattern=p1,seed=0", 0, ["git aaaaaaaaaaaa"])
    coded_run(tmp_path / "pattern=p3,seed=0", 0, ["git aaaaaaaaaaaa", "git aaaaaaaaaaaa"])
    assert study.code_lines(tmp_path) == ["code: git aaaaaaaaaaaa (every piece)"]

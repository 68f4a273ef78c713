"""Fused members (resattn.members, engine.train_members, hydra/launcher=fused): each member is its own run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, TINY, run_train
from resattn import engine
from resattn.members import fusion_key, stack
from resattn.model import SimpleCNN

CONFIGS = ROOT / "configs"
# fp32 and eager: fused and unfused runs then differ only by the order of floating-point sums
EXACT = [
    *TINY,
    "trainer.precision=fp32",
    "trainer.compile=false",
    "trainer.log_every_n_steps=1",
    "pattern=p3_controlled",
    "optim.lr=0.02",
    "optim.lam_lr_scale=500",
]  # a gentle rate: float differences stay small


def make(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=[*EXACT, *overrides])


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
        if not tag.startswith("throughput")
    }


def assert_same_run(fused: Path, alone: Path, tol: float = 2e-4) -> None:
    """Losses, λ and learning rates within float tolerance; accuracies within one image in a hundred (a
    last-bit difference may flip an argmax between two near-equal logits)."""
    a, b = scalars(fused), scalars(alone)
    assert set(a) == set(b)
    for tag in a:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        close = 0.01 if "acc" in tag else tol
        assert [v for _, v in a[tag]] == pytest.approx([v for _, v in b[tag]], abs=close, rel=tol), tag
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (fused, alone))
    for key in ("status", "step", "epochs_completed", "final_test_acc", "best_test_acc"):
        assert sa[key] == pytest.approx(sb[key], abs=0.01), key
    assert sa["final_lambda"] == pytest.approx(sb["final_lambda"], abs=tol)
    assert (sa["members"], sb["members"]) == (2, 1)


def test_the_stack_computes_what_each_member_computes_alone():
    torch.manual_seed(0)
    models = [SimpleCNN("p1", width=0.25) for _ in range(3)]
    x = torch.randn(3, 4, 3, 32, 32)
    members = stack(models)
    out = members(x)
    for m, model in enumerate(models):
        assert torch.allclose(out[m], model(x[m]), atol=1e-5)
        assert all(
            torch.allclose(v, members.state_dict(m)[k], atol=1e-6)
            for k, v in model.state_dict().items()
            if k.endswith("running_mean")
        )  # each member's BN statistics moved with its own batch


def test_fused_training_steps_equal_unfused_ones_in_float64():
    """Weights, BN statistics, momentum and weight decay: three SGD steps of two stacked members against each
    member trained alone, in float64, where only the order of sums differs."""
    import copy

    from resattn.build import build_optimizer

    cfg = make()
    torch.manual_seed(0)
    models = [SimpleCNN("p3_controlled", width=0.25).double() for _ in range(2)]
    alone = [copy.deepcopy(model) for model in models]
    x, y = torch.randn(2, 8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (2, 8))

    def three_steps(members, x, y):
        optimizer, scheduler = build_optimizer(cfg, members.params, members.template, total_steps=10)
        for _ in range(3):
            engine.train_step(members, optimizer, scheduler, x, y, torch.ones(len(x), dtype=torch.bool), False, 0.1)
        every = range(members.n)
        return [members.state_dict(m) for m in every], [members.momentum(optimizer, m) for m in every]

    (fused, fused_momentum) = three_steps(stack(models), x, y)
    for m, model in enumerate(alone):
        ([state], [momentum]) = three_steps(stack([model]), x[m : m + 1], y[m : m + 1])
        for k, v in state.items():
            assert torch.allclose(fused[m][k].double(), v.double(), rtol=0, atol=1e-12), k
        assert momentum.keys() == fused_momentum[m].keys()
        assert all(torch.allclose(fused_momentum[m][k], v, rtol=0, atol=1e-12) for k, v in momentum.items())


def test_only_seed_and_lam_init_may_differ_within_a_group():
    base = fusion_key(make("seed=0"))
    assert fusion_key(make("seed=3", "pattern.lam_init=0.5")) == base
    assert fusion_key(make("seed=0", "pattern=p1")) != base
    assert fusion_key(make("seed=0", "optim.lr=0.1")) != base


def test_each_fused_member_matches_its_unfused_run_step_by_step(tmp_path):
    cfgs = [make("seed=0"), make("seed=1", "pattern.lam_init=0.3")]
    summaries = engine.train_members(cfgs, [tmp_path / "f0", tmp_path / "f1"])
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    for i, cfg in enumerate(cfgs):
        engine.train(cfg, tmp_path / f"a{i}")
        assert_same_run(tmp_path / f"f{i}", tmp_path / f"a{i}")
    assert scalars(tmp_path / "f0")["lambda/block1"] != scalars(tmp_path / "f1")["lambda/block1"]


def test_a_diverging_member_stops_and_the_healthy_one_keeps_its_result(tmp_path, monkeypatch):
    build = engine.build_model

    def poisoned(cfg, num_classes):  # seed 1's network starts with an infinite weight: its loss is NaN at once
        model = build(cfg, num_classes)
        if cfg.seed == 1:
            with torch.no_grad():
                model.head[2].weight.fill_(float("inf"))
        return model

    monkeypatch.setattr(engine, "build_model", poisoned)
    summaries = engine.train_members([make("seed=0"), make("seed=1")], [tmp_path / "f0", tmp_path / "f1"])
    assert [s["status"] for s in summaries] == ["completed", "diverged"]
    assert summaries[1]["step"] == 1 and "non-finite" in summaries[1]["error"]
    assert json.loads((tmp_path / "f1" / "summary.json").read_text())["status"] == "diverged"
    monkeypatch.setattr(engine, "build_model", build)
    engine.train(make("seed=0"), tmp_path / "a0")
    assert_same_run(tmp_path / "f0", tmp_path / "a0")


SWEEP = [*EXACT, "seed=0,1", "hydra/launcher=fused", "trainer.epochs=3", "data.train_size=512"]


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_a_fused_sweep_stopped_by_sigterm_resumes_every_member(tmp_path):
    reference = run_train("-m", *SWEEP, f"hydra.sweep.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr
    sweep = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", "-m", *SWEEP, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (sweep / "seed=1" / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the first epoch's checkpoints are written
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    for seed in (0, 1):
        s = json.loads((sweep / f"seed={seed}" / "summary.json").read_text())
        assert s["status"] == "interrupted" and s["stop_reason"] == "SIGTERM" and s["members"] == 2
    again = run_train("-m", *SWEEP, f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("[resattn.records][INFO] - resuming from") == 2, again.stdout
    for seed in (0, 1):
        a, b = (json.loads((d / f"seed={seed}" / "summary.json").read_text()) for d in (sweep, tmp_path / "reference"))
        assert a["status"] == "completed"
        assert a["final_test_acc"] == pytest.approx(b["final_test_acc"], abs=1e-6)
        assert a["final_lambda"] == pytest.approx(b["final_lambda"], abs=1e-6)
    acc = EventAccumulator(str(sweep / "seed=1"))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.summary_metadata  # an ordinary job's HParams entry
    assert (sweep / "report.md").exists()


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_groups_run_side_by_side_in_worker_processes(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(
        "-m",
        *TINY,
        "trainer.epochs=1",
        "seed=0,1",
        "pattern=p1,baseline",
        "hydra/launcher=fused",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr
    assert "kept apart by pattern.name" in proc.stdout + proc.stderr
    for name in ("pattern=p1,seed=0", "pattern=p1,seed=1", "pattern=baseline,seed=0", "pattern=baseline,seed=1"):
        s = json.loads((sweep / name / "summary.json").read_text())
        assert (s["status"], s["members"]) == ("completed", 2), name
        assert (sweep / name / ".hydra" / "overrides.yaml").exists()

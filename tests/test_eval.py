"""Evaluation under corruptions and the λ learning rate, wired into training: summary, events, resume."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, run_train
from resattn.build import build_model, build_optimizer
from resattn.engine import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_OVERRIDES = [o for o in TINY if not o.startswith("tracking.progress")] + ["tracking.progress=false"]


def make(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=[*TINY_OVERRIDES, *overrides])


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("robust")
    proc = run_train(
        *TINY,
        "eval.corruptions=[noise,contrast]",
        "eval.severities=[1,5]",
        "eval.corruption_test_size=40",
        "eval.corruption_every=1",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_summary_holds_each_corruption_and_severity_and_their_mean(robust_run):
    s = json.loads((robust_run / "summary.json").read_text())
    names = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "contrast"]
    assert list(s["corruption_acc"]) == names
    assert all(list(by_severity) == ["1", "5"] for by_severity in s["corruption_acc"].values())
    accs = [a for by_severity in s["corruption_acc"].values() for a in by_severity.values()]
    assert all(a * 40 == round(a * 40) for a in accs)  # fractions of the 40-image subset
    assert s["robust_acc"] == pytest.approx(sum(accs) / len(accs))
    assert s["corruption_eval_s"] > 0


def test_events_hold_corruption_accuracy_at_every_evaluation(robust_run):
    acc = EventAccumulator(str(robust_run))
    acc.Reload()
    s = json.loads((robust_run / "summary.json").read_text())
    mean = acc.Scalars("acc/corrupt/mean")
    assert [e.step for e in mean] == [4, 8]  # corruption_every=1: after each of the two 4-step epochs
    assert mean[-1].value == pytest.approx(s["robust_acc"], abs=1e-6)
    contrast = acc.Scalars("acc/corrupt/contrast")[-1].value
    assert contrast == pytest.approx(sum(s["corruption_acc"]["contrast"].values()) / 2, abs=1e-6)


def test_a_rerun_of_a_finished_run_keeps_its_corruption_results(robust_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(robust_run, copy)
    before = json.loads((copy / "summary.json").read_text())
    cfg = make(
        "eval.corruptions=[noise,contrast]",
        "eval.severities=[1,5]",
        "eval.corruption_test_size=40",
        "eval.corruption_every=1",
    )
    after = train(cfg, copy)
    assert json.loads(json.dumps(after["corruption_acc"])) == before["corruption_acc"]  # JSON keys are strings
    assert after["robust_acc"] == before["robust_acc"]


def test_lam_lr_scale_multiplies_only_the_lambda_learning_rate():
    cfg = make("optim.lam_lr_scale=10", "pattern.lam_shape=channel")
    model = build_model(cfg, 10)
    optimizer, scheduler = build_optimizer(cfg, dict(model.named_parameters()), model, total_steps=10)
    lam_ids = {id(b.lam_logit) for b in model.blocks.values()}
    for group in optimizer.param_groups:
        is_lam = {id(p) in lam_ids for p in group["params"]}
        assert len(is_lam) == 1
        assert group["max_lr"] == pytest.approx(cfg.optim.lr * (10 if is_lam.pop() else 1))
        assert group["weight_decay"] == (0.0 if any(p.ndim <= 1 for p in group["params"]) else cfg.optim.weight_decay)


def test_the_step_schedule_divides_every_rate_by_10_at_half_and_three_quarters_of_the_steps():
    """He et al.'s schedule: 0.1 until 32k of 64k steps, 0.01 until 48k, then 0.001 (here over 64 steps)."""
    cfg = make("optim.schedule=step", "optim.lam_lr_scale=10")
    model = build_model(cfg, 10)
    optimizer, scheduler = build_optimizer(cfg, dict(model.named_parameters()), model, total_steps=64)
    rates = []
    for _ in range(64):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    base = [cfg.optim.lr, cfg.optim.lr, cfg.optim.lr * 10]
    for step, got in enumerate(rates):
        factor = 1.0 if step < 32 else 0.1 if step < 48 else 0.01
        assert got == pytest.approx([b * factor for b in base]), step


def test_lambda_travels_further_at_a_higher_lambda_learning_rate(tmp_path):
    travel = {}
    for scale in (1, 100):
        s = train(make(f"optim.lam_lr_scale={scale}"), tmp_path / str(scale))
        start = torch.sigmoid(torch.logit(torch.tensor(0.1))).item()
        assert s["lam_travel"] == pytest.approx({k: v - start for k, v in s["final_lambda"].items()})
        travel[scale] = sum(abs(v) for v in s["lam_travel"].values())
    assert travel[100] > 5 * travel[1] > 0


def test_fixed_lambda_does_not_travel(tmp_path):
    s = train(make("pattern.lam_learnable=false", "optim.lam_lr_scale=100"), tmp_path)
    assert s["lam_travel"] == {"block1": 0.0, "block2": 0.0}

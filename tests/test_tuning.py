"""Per-arm tuning (issue 17, parts 1-3): validation metrics in the report, the Optuna tuning presets, the table
of tuned rates and the comparison at them."""

import csv
import json

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT
from resattn import report
from resattn.errors import ConfigError
from resattn.tuning import DIVERGED, check_objective, objective_value, with_optuna_sweeper
from test_report import fake_run


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_shows_validation_metrics_and_each_groups_lr(tmp_path):
    """Runs at tuned rates: a validation split (no best_test_acc: the test set is read at the end only) and a
    different lr per pattern. The groups are the patterns, each showing its lr; val accuracy is a metric."""
    lrs = {"baseline": 0.2, "p1": 0.1}
    for pattern, lr in lrs.items():
        for seed in (100, 101):
            final = 0.6 + 0.01 * (seed % 3) + (0.02 if pattern == "p1" else 0)
            fake_run(tmp_path / f"{pattern},seed={seed}", pattern, seed, final=final,
                     config={"optim.lr": lr, "data": {"val_size": 500}},
                     summary={"best_test_acc": None, "final_val_acc": final + 0.05, "best_val_acc": final + 0.06})
    md = report.write_report(tmp_path).read_text()
    groups = {r["pattern.name"]: r for r in rows(tmp_path / "groups.csv")}
    assert {p: float(groups[p]["optim.lr"]) for p in lrs} == lrs
    assert "optim.lr=0.1" in groups["p1"]["group"] and "optim.lr=0.2" in groups["baseline"]["group"]
    for p in lrs:
        assert float(groups[p]["final_val_acc_mean"]) == pytest.approx(float(groups[p]["final_test_acc_mean"]) + 0.05)
        assert groups[p]["n"] == "2"
    assert "final val acc %" in md and "best test acc" not in md
    assert {r["metric"] for r in rows(tmp_path / "comparisons.csv")} >= {"final_test_acc", "final_val_acc"}


def test_tuning_presets_need_and_get_the_optuna_sweeper():
    assert with_optuna_sweeper(["experiment=tune_lr", "pattern=p1"])[-1] == "hydra/sweeper=optuna"
    assert with_optuna_sweeper(["-m", "experiment=tune_lr_cpu"])[-1] == "hydra/sweeper=optuna"
    assert with_optuna_sweeper(["experiment=tune_lr", "hydra/sweeper=basic"]) == ["experiment=tune_lr",
                                                                                  "hydra/sweeper=basic"]
    assert with_optuna_sweeper(["experiment=compare_patterns"]) == ["experiment=compare_patterns"]


def compose_tuning(*overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=["hydra/sweeper=optuna", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("preset,trials", [("tune_lr", 16), ("tune_lr_cpu", 6)])
def test_tuning_presets_compose(preset, trials):
    cfg = compose_tuning(f"experiment={preset}", "pattern=p3", "data.root=/x")
    s = cfg.hydra.sweeper
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "optuna"
    assert (s.direction, s.n_trials, s.study_name) == ("maximize", trials, "tune_lr_p3")
    assert s.params["optim.lr"] == "tag(log, interval(0.01, 2.0))"
    assert cfg.objective == "final_val_acc" and cfg.data.val_size > 0
    assert f"/{preset}/p3/" in cfg.hydra.sweep.dir
    assert check_objective(cfg) == "final_val_acc"


def test_the_objective_is_validation_accuracy_only(tmp_path):
    cfg = compose_tuning("experiment=tune_lr")
    cfg.objective = "final_test_acc"
    with pytest.raises(ConfigError, match="^objective must be one of final_val_acc, best_val_acc"):
        check_objective(cfg)
    cfg.objective, cfg.data.val_size = "final_val_acc", 0
    with pytest.raises(ConfigError, match="^objective final_val_acc needs a validation split: set data.val_size"):
        check_objective(cfg)
    assert objective_value("final_val_acc", {"final_val_acc": 0.7}, tmp_path) == 0.7
    (tmp_path / "summary.json").write_text(json.dumps({"status": "diverged"}))
    assert objective_value("final_val_acc", None, tmp_path) == DIVERGED
    (tmp_path / "summary.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(RuntimeError, match="failed"):
        objective_value("final_val_acc", None, tmp_path)

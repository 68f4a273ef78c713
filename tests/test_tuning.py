"""Per-arm tuning (issue 17, parts 1-3; issues 25 and 27): validation metrics in the report, the Optuna tuning
presets and what they refuse, the table of tuned rates and the comparison at them."""

import csv
import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from test_report import fake_run

from conftest import ROOT, run_train
from resattn import report
from resattn.errors import ConfigError
from resattn.tuning import (
    DIVERGED,
    check_objective,
    check_tuned_rates,
    check_tuning,
    objective_value,
    with_optuna_sweeper,
)


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
            fake_run(
                tmp_path / f"{pattern},seed={seed}",
                pattern,
                seed,
                final=final,
                config={"optim.lr": lr, "data": {"val_size": 500}},
                summary={"best_test_acc": None, "final_val_acc": final + 0.05, "best_val_acc": final + 0.06},
            )
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
    def parsed(args):  # as train.py hands them to Hydra: its own argument parser
        return get_args_parser().parse_args(with_optuna_sweeper(args))

    assert parsed(["experiment=tune_lr", "pattern=p1"]).overrides == [
        "hydra/sweeper=optuna",
        "experiment=tune_lr",
        "pattern=p1",
    ]
    args = parsed(["-m", "experiment=tune_lr_cpu", "pattern=p1"])  # the documented command
    assert args.multirun and args.overrides == ["hydra/sweeper=optuna", "experiment=tune_lr_cpu", "pattern=p1"]
    args = parsed(["experiment=tune_lr", "--cfg", "hydra", "-p", "hydra.sweeper"])
    assert args.cfg == "hydra" and args.overrides == ["hydra/sweeper=optuna", "experiment=tune_lr"]
    assert with_optuna_sweeper(["experiment=tune_lr", "hydra/sweeper=basic"]) == [
        "experiment=tune_lr",
        "hydra/sweeper=basic",
    ]
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


# ---------------------------------------------------------------- the table of tuned rates, and runs at them


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tuned_lr", ROOT / "scripts" / "tuned_lr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def trial_files(*overrides: str) -> tuple[str, str]:
    """A tune_lr_cpu trial's .hydra/config.yaml and .hydra/hydra.yaml, as Hydra composes them."""
    cfg = compose_tuning("experiment=tune_lr_cpu", "data.root=/images", *overrides)
    return trial_texts(cfg)


def trial_texts(cfg) -> tuple[str, str]:
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=False)
    hydra = tree.pop("hydra")
    return OmegaConf.to_yaml(tree), OmegaConf.to_yaml({"hydra": hydra})


def write_study(folder, texts, best_lr, best_value, statuses=("completed", "completed", "diverged"), summary=None):
    """A study folder as the Optuna sweeper leaves it: optimization_results.yaml and the trials' folders."""
    from omegaconf import OmegaConf

    folder.mkdir(parents=True)
    OmegaConf.save(
        {"name": "optuna", "best_params": {"optim.lr": best_lr}, "best_value": best_value},
        folder / "optimization_results.yaml",
    )
    for i, status in enumerate(statuses):
        (folder / f"trial{i}" / ".hydra").mkdir(parents=True)
        for name, text in zip(("config.yaml", "hydra.yaml"), texts):
            (folder / f"trial{i}" / ".hydra" / name).write_text(text)
        (folder / f"trial{i}" / "summary.json").write_text(
            json.dumps({"status": status, "precision": "fp32", "data_fingerprint": "ab" * 32, **(summary or {})})
        )
    return folder


def fake_study(folder, pattern, best_lr, best_value, *overrides, **kwargs):
    return write_study(folder, trial_files(f"pattern={pattern}", *overrides), best_lr, best_value, **kwargs)


def tuned_lr(capsys, *args) -> tuple[int, str, str]:
    """scripts/tuned_lr.py ARGS: its exit code, stdout and stderr."""
    try:
        code = load_script().main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def composed_command(command: str, arm: str):
    """The config of one job (tuned_lr=ARM) of a printed `python -m train -m ...` command, parsed by Hydra's own
    argument parser and composed as train.py composes it."""
    args = shlex.split(command, comments=True)
    assert args[:3] == ["python", "-m", "train"]
    overrides = [o for o in get_args_parser().parse_args(args[3:]).overrides if not o.startswith("tuned_lr=")]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"tuned_lr={arm}"])


def recipe_of(cfg) -> dict:
    """The keys that define the experiment (resattn.identity), less what a comparison at tuned rates changes."""
    from omegaconf import OmegaConf

    from resattn.errors import flatten
    from resattn.identity import defines_the_experiment

    flat = flatten(OmegaConf.to_container(cfg))
    return {
        k: v
        for k, v in flat.items()
        if (defines_the_experiment(k) or k == "data.root")
        and k.split(".")[0] not in ("pattern", "seed", "objective")
        and k not in ("optim.lr", "data.val_size")
    }


def test_table_of_tuned_rates_and_the_configs_it_writes(tmp_path, monkeypatch, capsys):
    """The rates go beside the table, outside the project's configs/ (writing them there made two tests fail),
    and the command printed runs compare_tuned on them at the recipe the arms were tuned at."""
    from omegaconf import OmegaConf

    monkeypatch.chdir(tmp_path)  # the table names each study as the command line did, from here
    before = sorted((ROOT / "configs").rglob("*"))
    studies = Path("sweeps")
    fake_study(studies / "baseline" / "2026-12-01_10-00-00", "baseline", 0.31234567, 0.81)
    fake_study(studies / "p1" / "2026-12-01_09-00-00", "p1", 0.9, 0.70)  # older: left out
    fake_study(studies / "p1" / "2026-12-01_11-00-00", "p1", 0.0523456, 0.79, statuses=("completed",) * 4)
    code, out, err = tuned_lr(capsys, studies)
    assert (code, err) == (0, "")
    assert sorted((ROOT / "configs").rglob("*")) == before
    table = rows(studies / "tuned_lr.csv")
    assert [(r["pattern"], r["best optim.lr"], r["best val acc"], r["trials"], r["diverged"]) for r in table] == [
        ("baseline", "0.3123", "0.8100", "3", "1"),
        ("p1", "0.05235", "0.7900", "4", "0"),
    ]
    assert [r["study"] for r in table] == ["sweeps/baseline/2026-12-01_10-00-00", "sweeps/p1/2026-12-01_11-00-00"]
    md = (studies / "tuned_lr.md").read_text()
    assert "2026-12-01_09-00-00 left out" in md and "model.width=0.5" in md
    assert OmegaConf.load(studies / "tuned_lr" / "p1.yaml").optim.lr == 0.05235
    command = out.strip().splitlines()[-1]
    assert command.startswith(
        "python -m train -m experiment=compare_tuned 'hydra.searchpath=[file://sweeps]' "
        "tuned_lr=baseline,p1 data=folder data.root=/images "
    )
    study = compose_tuning("experiment=tune_lr_cpu", "data.root=/images", "pattern=p1")
    for pattern, lr in (("baseline", 0.3123), ("p1", 0.05235)):  # each job: its pattern, its lr, the tuned recipe
        cfg = composed_command(command, pattern)
        assert (cfg.pattern.name, cfg.optim.lr, cfg.data.val_size) == (pattern, lr, 0)
        assert recipe_of(cfg) == recipe_of(study)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "experiment=compare_tuned",
                "tuned_lr=p1",
                "model=resnet",
                f"hydra.searchpath=[file://{tmp_path / studies}]",
            ],
        )
    assert cfg.optim.lr == 0.05235  # the tuned rate wins over a backbone's own recipe


@pytest.mark.parametrize(
    "override,values",
    [
        ("optim.weight_decay=0.001", "optim.weight_decay=0.0005 and optim.weight_decay=0.001"),
        ("optim.momentum=0.8", "optim.momentum=0.9 and optim.momentum=0.8"),
        ("optim.label_smoothing=0", "optim.label_smoothing=0.1 and optim.label_smoothing=0"),
        ("data.augment=false", "data.augment=true and data.augment=false"),
        ("data.subset_seed=1", "data.subset_seed=0 and data.subset_seed=1"),
        ("model.width=1.0", "model.width=0.5 and model.width=1.0"),
        ("precision bf16", "trainer.precision=fp32 and trainer.precision=bf16"),  # as the trials resolved auto
    ],
)
def test_studies_of_different_recipes_are_refused(tmp_path, capsys, override, values):
    """Any key that defines the experiment (resattn.identity), not only a list of recipe keys: one line naming
    both studies, the key and both values; nothing written."""
    fake_study(tmp_path / "a", "baseline", 0.3, 0.8)
    if override.startswith("precision"):
        fake_study(tmp_path / "b", "p1", 0.3, 0.8, summary={"precision": "bf16"})
    else:
        fake_study(tmp_path / "b", "p1", 0.3, 0.8, override)
    code, out, err = tuned_lr(capsys, tmp_path)
    assert (code, out) == (2, "")
    assert err == (
        f"error: {tmp_path / 'a'} and {tmp_path / 'b'} tuned different recipes: {values}: their rates "
        "are not comparable; tune every arm at one recipe\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_studies_differ_in_their_arm_and_tuned_keys_only(tmp_path, capsys):
    """The pattern and what it sets, the tuned lr and the seed may differ; the table is written."""
    fake_study(tmp_path / "a", "p3_controlled", 0.3, 0.8, "pattern.lam_init=0.3", "seed=1")
    fake_study(tmp_path / "b", "p1", 0.3, 0.8, "optim.lr=0.5")
    assert tuned_lr(capsys, tmp_path)[0] == 0


@pytest.mark.parametrize(
    "text",
    ["best_params: {optim.lr: 0.3\nbest_value: [", "3", "best_params: 3\n", "best_params: {optim.lr: 0.3}\n", "\udcff"],
)
def test_a_corrupt_optuna_result_is_one_line(tmp_path, capsys, text):
    results = fake_study(tmp_path / "a", "p1", 0.3, 0.8) / "optimization_results.yaml"
    results.write_bytes(text.encode(errors="surrogateescape"))
    code, out, err = tuned_lr(capsys, tmp_path)
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith(f"error: {results}: unreadable Optuna result (") and "rerun the study" in err


def test_the_rates_never_go_into_the_projects_configs(tmp_path, capsys):
    fake_study(tmp_path / "a", "p1", 0.3, 0.8)
    for configs, says in (
        (ROOT / "configs" / "tuned_lr", "inside the project's configs/"),
        (tmp_path / "rates", "the folder must be named tuned_lr"),
    ):
        code, out, err = tuned_lr(capsys, tmp_path, "--configs", configs)
        assert (code, out) == (2, "") and err.count("\n") == 1 and says in err
    assert sorted(p.name for p in (ROOT / "configs" / "tuned_lr").iterdir()) == ["README.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


# ---------------------------------------------------------------- refused before anything runs, and the README


@pytest.mark.parametrize("mode", ["hydra.mode=MULTIRUN", "hydra.mode=RUN"])
def test_tuning_without_a_validation_split_is_one_line_and_leaves_nothing(tmp_path, mode):
    """Refused when the sweep (or run) starts: it was Optuna's 56-line traceback after a trial folder was made."""
    proc = run_train("experiment=tune_lr_cpu", "pattern=p1", "data=synthetic", "data.val_size=0", mode, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "error: objective final_val_acc needs a validation split: set data.val_size (e.g. 5000)\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "overrides,says",
    [
        (
            ["experiment=tune_lr", "hydra/launcher=fused"],
            "^hydra/launcher=fused cannot run the Optuna sweeper's trials",
        ),
        (["experiment=compare_patterns"], "^hydra/sweeper=optuna needs an objective to maximise: choose experiment="),
    ],
)
def test_an_optuna_sweep_that_cannot_give_a_result_is_refused(overrides, says):
    check_tuning(compose_tuning("experiment=tune_lr_cpu", "data.root=/images"))  # what the presets ask for passes
    with pytest.raises(ConfigError, match=says):
        check_tuning(compose_tuning(*overrides))


def test_compare_tuned_before_tuning_says_what_to_run_first(tmp_path):
    proc = run_train("experiment=compare_tuned", "data=synthetic", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr.count("\n")) == (2, "", 1)
    assert proc.stderr.startswith(
        "error: experiment=compare_tuned needs each arm's tuned rate and finds none: tune "
        "the arms first (experiment=tune_lr or tune_lr_cpu), then scripts/tuned_lr.py"
    )
    assert list(tmp_path.iterdir()) == []


def test_compare_tuned_after_tuning_some_arms_names_them(tmp_path):
    (tmp_path / "tuned_lr").mkdir()
    search = f"hydra.searchpath=[file://{tmp_path}]"
    for arm in ("baseline", "p1"):
        (tmp_path / "tuned_lr" / f"{arm}.yaml").write_text("# @package _global_\n")
    with pytest.raises(
        ConfigError,
        match=f"^experiment=compare_tuned: no tuned rate for p2, p3, p3_controlled, p4 in "
        f"{tmp_path / 'tuned_lr'}: tune those arms first, or compare the tuned ones: "
        "tuned_lr=baseline,p1$",
    ):
        check_tuned_rates(["-m", "experiment=compare_tuned", search])
    check_tuned_rates(["-m", "experiment=compare_tuned", search, "tuned_lr=baseline,p1"])  # the arms it has
    for arm in ("p2", "p3", "p3_controlled", "p4"):
        (tmp_path / "tuned_lr" / f"{arm}.yaml").write_text("# @package _global_\n")
    check_tuned_rates(["-m", "experiment=compare_tuned", search])


def test_tuning_runs_do_not_open_with_alembic_lines():
    """Optuna's database layer (alembic) logs 7 "setup plugin" lines at INFO when the sweeper imports it, through
    the logging Hydra sets up from the preset's hydra.hydra_logging."""
    code = (
        "from hydra import compose, initialize_config_dir; from hydra.core.utils import configure_log\n"
        f"with initialize_config_dir({str(ROOT / 'configs')!r}, version_base='1.3'):\n"
        "    cfg = compose('config', ['hydra/sweeper=optuna', 'experiment=tune_lr_cpu'],\n"
        "                  return_hydra_config=True)\n"
        "configure_log(cfg.hydra.hydra_logging)\nimport alembic.autogenerate"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "setup plugin" not in proc.stdout + proc.stderr


def readme_tuning() -> tuple[list[str], list[str], str]:
    """docs/sweeps.md's CPU tuning sequence: the tuning loop's arms and command, tuned_lr.py's arguments, and the
    comparison's command, comments left out."""
    lines = (ROOT / "docs" / "sweeps.md").read_text().splitlines()
    loop = next(
        re.fullmatch(r"for p in (.+); do (python -m train .+); done", line)
        for line in lines
        if "experiment=tune_lr_cpu" in line and line.startswith("for p in")
    )
    table = next(shlex.split(line, comments=True) for line in lines if line.startswith("python scripts/tuned_lr.py"))
    compare = next(line for line in lines if line.startswith("python -m train -m experiment=compare_tuned"))
    return loop[1].split(), shlex.split(loop[2]), table[2:], " ".join(shlex.split(compare, comments=True))


def test_the_readme_tuning_sequence_works_as_written(tmp_path, monkeypatch, capsys):
    """Each tuning command of docs/sweeps.md, parsed by Hydra's own parser, writes where tuned_lr.py reads (a study per
    arm, made here without training), and tuned_lr.py prints its comparison, which runs every arm at the
    recipe they were tuned at."""
    monkeypatch.chdir(tmp_path)
    arms, tune, table, compare = readme_tuning()
    tuned = {}
    for i, arm in enumerate(arms):
        args = get_args_parser().parse_args(with_optuna_sweeper([a.replace("$p", arm) for a in tune[3:]]))
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            tuned[arm] = compose("config", overrides=args.overrides, return_hydra_config=True)
        write_study(Path(tuned[arm].hydra.sweep.dir), trial_texts(tuned[arm]), round(0.1 * (i + 1), 4), 0.5)
    code, out, err = tuned_lr(capsys, *table)
    assert (code, err) == (0, "")
    assert shlex.join(shlex.split(out.strip().splitlines()[-1])) == shlex.join(shlex.split(compare))
    check_tuned_rates(shlex.split(compare)[3:])
    for i, arm in enumerate(arms):
        cfg = composed_command(compare, arm)
        assert (cfg.pattern.name, cfg.optim.lr) == (arm, round(0.1 * (i + 1), 4))
        assert recipe_of(cfg) == recipe_of(tuned[arm])


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_two_tiny_trials_then_the_comparison_at_the_tuned_rates(tmp_path):
    """Real subprocesses: experiment=tune_lr runs two Optuna trials on synthetic data and writes
    optimization_results.yaml; the table script turns it into a config; compare_tuned runs each arm at its lr."""
    from omegaconf import OmegaConf

    from conftest import TINY, run_train

    study = tmp_path / "tune"
    proc = run_train(
        "experiment=tune_lr",
        "pattern=p1",
        *TINY,
        "data.val_size=64",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweep.dir={study}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "setup plugin" not in proc.stdout  # alembic's, quieted by the preset
    best = OmegaConf.load(study / "optimization_results.yaml")
    trials = {
        float(OmegaConf.load(study / t / ".hydra" / "config.yaml").optim.lr): json.loads(
            (study / t / "summary.json").read_text()
        )
        for t in ("trial0", "trial1")
    }
    assert len(trials) == 2 and all(0.01 <= lr <= 2.0 for lr in trials)
    assert all(s["status"] == "completed" and s["best_test_acc"] is None for s in trials.values())
    assert best.best_value == max(s["final_val_acc"] for s in trials.values())
    assert trials[best.best_params["optim.lr"]]["final_val_acc"] == best.best_value

    sp = tmp_path / "sp" / "tuned_lr"
    assert load_script().main([str(study), "--configs", str(sp)]) == 0
    (sp / "baseline.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /pattern: baseline\noptim:\n  lr: 0.05\n"
    )
    tuned = OmegaConf.load(sp / "p1.yaml").optim.lr
    compare = tmp_path / "compare"
    # the options live on a search path of the test's own, not in the checkout: `python -m train` finds them there
    proc = run_train(
        "-m",
        "experiment=compare_tuned",
        "tuned_lr=baseline,p1",
        "seed=0",
        *TINY,
        f"hydra.searchpath=[file://{tmp_path / 'sp'}]",
        f"hydra.sweep.dir={compare}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups = {r["pattern.name"]: float(r["optim.lr"]) for r in rows(compare / "groups.csv")}
    assert groups == {"baseline": 0.05, "p1": tuned}

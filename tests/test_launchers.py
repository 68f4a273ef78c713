"""Sweeps: the experiment presets, Hydra's parallel launchers, and how CPU threads are shared.

The launcher tests run real two-job sweeps of tiny synthetic runs in subprocesses, one sweep per
launcher (about 15 s each on 2 cores); everything else composes configs without training.
"""

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from resattn.job import available_cores, check_choices, cpu_threads, place, threads_per_job
from resattn.sweep import NAME_MAX, job_name, safe_name, varied_keys

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = [
    "data=synthetic",
    "model.width=0.25",
    "trainer.epochs=1",
    "data.train_size=128",
    "data.test_size=64",
    "tracking.progress=false",
    "trainer.device=cpu",
]
PATTERNS = ["baseline", "p1", "p2", "p3", "p3_controlled", "p4"]


def train(cwd: Path, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def job_dirs(sweep_dir: Path) -> list[str]:
    return sorted(d.name for d in sweep_dir.iterdir() if (d / ".hydra").is_dir())


# --- presets: composed and expanded as the basic sweeper does, without training ---


def expand(preset: str, *cli: str):
    """(preset's composed config, [(job's folder name, job's composed config)]) for
    `python -m train -m experiment=<preset> *cli`."""
    args = [f"experiment={preset}", *cli]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=args, return_hydra_config=True)
        params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
        # BasicSweeper.sweep: the preset's params first, then the command line (a repeated key replaces the sweep)
        overrides = OverridesParser.create().parse_overrides(params + args)
        [batch] = BasicSweeper.split_arguments(overrides, max_batch_size=None)
        varied = varied_keys(dict(cfg.hydra.sweeper.params), args)
        return cfg, [(job_name(job, varied, i), compose("config", overrides=job)) for i, job in enumerate(batch)]


def test_compare_patterns_is_every_pattern_by_three_seeds():
    cfg, jobs = expand("compare_patterns")
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.hydra.sweep.dir.startswith("outputs/sweeps/compare_patterns/")
    assert len(jobs) == 3 * len(PATTERNS)
    assert sorted((j.pattern.name, j.seed) for _, j in jobs) == sorted(itertools.product(PATTERNS, [0, 1, 2]))
    assert sorted(name for name, _ in jobs) == sorted(
        f"pattern={p},seed={s}" for p, s in itertools.product(PATTERNS, [0, 1, 2])
    )


def test_lam_sweep_is_p3_controlled_over_lam_init_learnable_and_seeds():
    cfg, jobs = expand("lam_sweep")
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert len(jobs) == 36
    assert {j.pattern.name for _, j in jobs} == {"p3_controlled"}
    grid = itertools.product([0.01, 0.05, 0.1, 0.3, 0.5, 0.9], [True, False], [0, 1, 2])
    assert sorted((j.pattern.lam_init, j.pattern.lam_learnable, j.seed) for _, j in jobs) == sorted(grid)
    names = [name for name, _ in jobs]
    assert len(set(names)) == 36
    assert "pattern.lam_init=0.05,pattern.lam_learnable=false,seed=2" in names


def test_command_line_narrows_a_preset():
    _, jobs = expand("compare_patterns", "seed=0", "trainer.epochs=3")
    assert sorted(name for name, _ in jobs) == [f"pattern={p}" for p in PATTERNS]  # only what varies
    assert {(j.trainer.epochs, j.seed) for _, j in jobs} == {(3, 0)}


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_preset_expands_through_the_real_command_line(tmp_path):
    """Every job fails at once on a bad device (a key left out of folder names), so nothing trains:
    this counts the folders the real sweeper makes, without -m (the preset sets hydra.mode)."""
    out = tmp_path / "sweep"
    proc = train(tmp_path, "experiment=compare_patterns", "trainer.device=none", f"hydra.sweep.dir={out}")
    assert proc.returncode == 1, proc.stderr[-2000:]  # SweepEnd: jobs did not complete
    assert job_dirs(out) == sorted(f"pattern={p},seed={s}" for p, s in itertools.product(PATTERNS, [0, 1, 2]))
    assert f"{3 * len(PATTERNS)} of {3 * len(PATTERNS)} jobs did not complete" in proc.stderr


# --- launchers: real two-job sweeps ---

LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": [
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=5",
    ],
}
EXPECTED_THREADS = {"joblib": threads_per_job(available_cores(), 2), "submitit_local": 1}


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def sweep(request, tmp_path_factory):
    """(launcher name, sweep folder) after `python -m train -m <launcher> seed=0,1 <tiny run>`."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    out = tmp / "sweep"
    # Another thread count in the environment: joblib would otherwise give its workers cores // n_jobs
    # through these variables itself, and only the job's own setting should make the thread check pass.
    env = dict.fromkeys(["OMP_NUM_THREADS", "MKL_NUM_THREADS"], str(EXPECTED_THREADS[name] + 1))
    proc = train(tmp, "-m", *LAUNCHERS[name], *TINY, "seed=0,1", f"hydra.sweep.dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return name, out


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_sweep_jobs_complete_in_their_folders(sweep):
    _, out = sweep
    # named in the worker process as in the basic launcher: by the varied key only
    assert job_dirs(out) == ["seed=0", "seed=1"]
    assert (out / "sweep.yaml").exists()
    for s in (0, 1):
        summary = json.loads((out / f"seed={s}" / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["seed"] == s and summary["epochs_completed"] == 1


def test_sweep_jobs_use_their_share_of_cpu_threads(sweep):
    name, out = sweep
    for s in (0, 1):
        summary = json.loads((out / f"seed={s}" / "summary.json").read_text())
        assert summary.get("num_threads") == EXPECTED_THREADS[name], f"{name}, seed={s}"


# --- launcher, sweeper and output folder: refused before Hydra starts ---

FUSED_SWEEP = ["-m", "seed=0,1", "hydra/launcher=fused"]


@pytest.mark.parametrize(
    "args, line",
    [
        ([*FUSED_SWEEP, "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs must be an integer >= 1, got 0"),
        ([*FUSED_SWEEP, "hydra.launcher.n_jobs=-1"], "hydra.launcher.n_jobs must be an integer >= 1, got -1"),
        ([*FUSED_SWEEP, "hydra.launcher.n_jobs=abc"], "hydra.launcher.n_jobs must be an integer >= 1, got 'abc'"),
        ([*FUSED_SWEEP, "hydra.launcher.max_members=0"], "hydra.launcher.max_members must be an integer >= 1, got 0"),
        (
            [*FUSED_SWEEP, "hydra.launcher.max_members=abc"],
            "hydra.launcher.max_members must be an integer >= 1, got 'abc'",
        ),
        (
            [*FUSED_SWEEP, "hydra.launcher.max_member=3"],
            "unknown key hydra.launcher.max_member for hydra/launcher=fused; did you mean hydra.launcher.max_members?",
        ),
        (
            [*FUSED_SWEEP, "hydra.launcher.foo=1"],
            "unknown key hydra.launcher.foo for hydra/launcher=fused; its keys: n_jobs, max_members",
        ),
        (
            ["-m", "seed=0,1", "hydra/launcher=fuse"],
            "hydra/launcher=fuse is not a hydra/launcher config; did you mean "
            "hydra/launcher=fused? choose one of basic, fused, joblib, slurm, submitit_local, submitit_slurm",
        ),
        (
            ["pattern=p33"],
            "pattern=p33 is not a pattern config; did you mean pattern=p3? choose one of baseline, p1, "
            "p2, p3, p3_controlled, p4",
        ),
        ([*FUSED_SWEEP, "hydra.job.chdir=true"], "hydra.job.chdir=true does not work with hydra/launcher=fused"),
        (
            ["hydra/launcher=fused"],
            "hydra/launcher=fused launches the jobs of a sweep, and a single run has none: add -m",
        ),
        (["-m", "seed=0,1", "hydra.sweep.dir={file}"], "hydra.sweep.dir={file}: {file} is a file, not a folder"),
        (
            ["-m", "seed=0,1", "hydra.sweep.dir={file}/sweep"],
            "hydra.sweep.dir={file}/sweep: {file} is a file, not a folder",
        ),
        (["hydra.run.dir={file}"], "hydra.run.dir={file}: {file} is a file, not a folder"),
    ],
)
def test_launch_settings_hydra_would_refuse_late_are_one_line(args, line, tmp_path, capsys):
    """Issue 27: each was a traceback, a screen of Hydra's text after making the sweep folder, or accepted and
    then ignored (hydra.job.chdir, the fused launcher on a single run)."""
    taken = tmp_path / "taken.txt"
    taken.write_text("")
    with pytest.raises(SystemExit) as exit_:
        check_choices([a.format(file=taken) for a in args])
    (err,) = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and err.startswith(f"error: {line.format(file=taken)}"), err


@pytest.mark.parametrize(
    "args",
    [
        [*FUSED_SWEEP, "hydra.launcher.n_jobs=2", "hydra.launcher.max_members=5", "hydra.job.chdir=false"],
        ["-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"],  # joblib's -1: every core
        ["-m", "seed=0,1", "hydra/launcher=slurm", "+hydra.launcher.additional_parameters.mail-type=END"],
        ["-m", "seed=0,1", "hydra.sweep.dir={dir}/new/sweep"],
        ["-m", "experiment=tune_lr", "pattern=p1"],
    ],
)
def test_launch_settings_hydra_takes_pass(args, tmp_path):
    check_choices([a.format(dir=tmp_path) for a in args])


def test_a_refused_launch_setting_leaves_no_sweep_folder(tmp_path):
    """The real command: Hydra made the sweep folder, then refused the value with five lines and exit 1."""
    out = tmp_path / "sweep"
    proc = train(tmp_path, *TINY, *FUSED_SWEEP, "hydra.launcher.n_jobs=abc", f"hydra.sweep.dir={out}")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: hydra.launcher.n_jobs must be an integer >= 1, got 'abc'"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


# --- thread sharing ---


def launcher(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra.launcher


@pytest.mark.parametrize("cores, jobs, threads", [(16, 4, 4), (8, 3, 2), (2, 2, 1), (2, 4, 1), (1, 1, 1), (4, 0, 4)])
def test_threads_per_job_is_cores_over_jobs_at_least_one(cores, jobs, threads):
    assert threads_per_job(cores, jobs) == threads


@pytest.mark.parametrize(
    "n_jobs, cores, threads", [(2, 8, 4), (4, 2, 1), (1, 8, 8), (-1, 8, 1), (-2, 8, 1), (-8, 16, 1), (-12, 16, 3)]
)
def test_joblib_threads(n_jobs, cores, threads):
    # joblib: n_jobs=-1 is one job per core, -2 all cores but one, ...
    assert cpu_threads(launcher("hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"), cores) == threads


def test_joblib_default_is_one_thread_per_job():
    assert cpu_threads(launcher("hydra/launcher=joblib"), 16) == 1  # the plugin's default n_jobs=-1


def test_submitit_threads_are_cpus_per_task():
    assert cpu_threads(launcher("hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=3"), 16) == 3
    assert cpu_threads(launcher("hydra/launcher=submitit_local"), 16) is None  # not set: torch's default
    assert cpu_threads(launcher("hydra/launcher=slurm"), 16) == 4
    assert cpu_threads(launcher(), 16) is None  # basic launcher: one job at a time


def test_slurm_preset_requeues_timeouts_on_one_gpu():
    cfg = launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert cfg._target_.endswith("SlurmLauncher")
    assert (cfg.max_num_timeout, cfg.gpus_per_node, cfg.partition) == (3, 1, "gpu")


def test_slurm_preset_names_its_extra_when_the_plugin_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit):
        check_choices(["hydra/launcher=slurm"])
    assert 'pip install -e ".[slurm]"' in capsys.readouterr().err


def test_place_sets_threads_only_for_auto_in_a_multirun():
    def placed(num_threads, mode):
        cfg = OmegaConf.create({"trainer": {"num_threads": num_threads, "device": "cpu"}})
        hc = SimpleNamespace(
            mode=mode, launcher=launcher("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"), job=SimpleNamespace(num=0)
        )
        place(cfg, hc)
        return cfg.trainer.num_threads

    assert placed("auto", RunMode.MULTIRUN) == threads_per_job(available_cores(), 2)
    assert placed(3, RunMode.MULTIRUN) == 3
    assert placed("auto", RunMode.RUN) == "auto"


# --- job names and sweep folders ---


def test_job_names_hold_no_separator_and_fit_a_file_name():
    root = "/data/" + "x" * 400
    a = job_name([f"data.root={root}/a", "seed=0"], {"data.root"}, 0)
    b = job_name([f"data.root={root}/b", "seed=0"], {"data.root"}, 1)
    assert a != b and "/" not in a + b and max(len(a.encode()), len(b.encode())) <= NAME_MAX
    assert a == job_name([f"data.root={root}/a", "seed=1"], {"data.root"}, 7)  # stable; seed does not vary here
    assert safe_name("data.root=/a%2Fb") != safe_name("data.root=/a/b")  # the escape is one-to-one
    assert job_name(["seed=0"], set(), 3) == "job3"  # nothing varies: still a folder of its own


def test_a_job_folder_leads_with_its_arm_and_ends_with_the_seed():
    """Issue 27: compare_tuned's folders read seed=100,tuned_lr=baseline."""
    assert job_name(["seed=100", "tuned_lr=baseline"], {"seed", "tuned_lr"}, 0) == "tuned_lr=baseline,seed=100"
    assert job_name(["seed=2", "trainer.epochs=3", "pattern=p1"], None, 0) == "pattern=p1,trainer.epochs=3,seed=2"
    # otherwise the order is the key's, as before: a sweep's folders keep their names, so rerunning finishes it
    assert job_name(["seed=0", "pattern=p1", "optim.lr=0.1"], None, 0) == "optim.lr=0.1,pattern=p1,seed=0"


def test_every_sweep_lands_in_outputs_sweeps_name_date_time():
    def raw(path):  # the YAML as written, ${now:...} unresolved
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)

    stamp = "${now:%Y-%m-%d_%H-%M-%S}"
    assert raw(CONFIGS / "config.yaml")["hydra"]["sweep"]["dir"] == f"outputs/sweeps/multirun/{stamp}"
    presets = {p.stem: raw(p) for p in (CONFIGS / "experiment").glob("*.yaml")}
    sweeps = {name: cfg["hydra"]["sweep"]["dir"] for name, cfg in presets.items() if "sweep" in cfg.get("hydra", {})}
    # a tuning preset runs one study per pattern: a folder per pattern under its own name
    expected = {
        name: f"outputs/sweeps/{name}/{'${pattern.name}/' if name.startswith('tune_lr') else ''}{stamp}"
        for name in sweeps
    }
    assert sweeps and sweeps == expected


def test_quick_preset_is_a_short_single_run_on_any_data():
    for extra in ([], ["data=folder", "data.root=/images"]):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("config", overrides=["experiment=quick", *extra], return_hydra_config=True)
        assert cfg.hydra.mode != RunMode.MULTIRUN
        assert (cfg.data.train_size, cfg.data.test_size, cfg.model.width, cfg.trainer.epochs) == (5000, 1000, 0.5, 4)

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

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXCLUDED = set(OmegaConf.load(CONFIGS / "config.yaml").hydra.job.config.override_dirname.exclude_keys)
TINY = ["data=synthetic", "model.width=0.25", "trainer.epochs=1", "data.train_size=128", "data.test_size=64",
        "tracking.progress=false", "trainer.device=cpu"]
PATTERNS = ["baseline", "p1", "p2", "p3", "p3_controlled"]


def folder(overrides: list[str]) -> str:
    """A job's folder name as configs/config.yaml asks Hydra to make it: sorted overrides, some keys left out."""
    return ",".join(sorted(o for o in overrides if o.split("=")[0] not in EXCLUDED))


def train(cwd: Path, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def job_dirs(sweep_dir: Path) -> list[str]:
    return sorted(d.name for d in sweep_dir.iterdir() if (d / ".hydra").is_dir())


# --- presets: composed and expanded as the basic sweeper does, without training ---

def expand(preset: str, *cli: str):
    """(preset's composed config, one composed config per job) for `python -m train -m experiment=<preset> *cli`."""
    args = [f"experiment={preset}", *cli]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=args, return_hydra_config=True)
        params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
        # BasicSweeper.sweep: the preset's params first, then the command line (a repeated key replaces the sweep)
        overrides = OverridesParser.create().parse_overrides(params + args)
        [batch] = BasicSweeper.split_arguments(overrides, max_batch_size=None)
        return cfg, [compose("config", overrides=job, return_hydra_config=True) for job in batch]


def test_compare_patterns_is_five_patterns_by_three_seeds():
    cfg, jobs = expand("compare_patterns")
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.hydra.sweep.dir.startswith("outputs/sweeps/compare_patterns/")
    assert len(jobs) == 15
    assert sorted((j.pattern.name, j.seed) for j in jobs) == sorted(itertools.product(PATTERNS, [0, 1, 2]))
    assert sorted(j.hydra.job.override_dirname for j in jobs) == sorted(
        f"pattern={p},seed={s}" for p, s in itertools.product(PATTERNS, [0, 1, 2]))


def test_lam_sweep_is_p3_controlled_over_lam_init_learnable_and_seeds():
    cfg, jobs = expand("lam_sweep")
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert len(jobs) == 36
    assert {j.pattern.name for j in jobs} == {"p3_controlled"}
    grid = itertools.product([0.01, 0.05, 0.1, 0.3, 0.5, 0.9], [True, False], [0, 1, 2])
    assert sorted((j.pattern.lam_init, j.pattern.lam_learnable, j.seed) for j in jobs) == sorted(grid)
    names = [j.hydra.job.override_dirname for j in jobs]
    assert len(set(names)) == 36
    assert "pattern.lam_init=0.05,pattern.lam_learnable=False,seed=2" in names


def test_command_line_narrows_a_preset():
    _, jobs = expand("compare_patterns", "seed=0", "trainer.epochs=3")
    assert sorted(j.hydra.job.override_dirname for j in jobs) == [f"pattern={p},seed=0,trainer.epochs=3" for p in PATTERNS]
    assert {j.trainer.epochs for j in jobs} == {3}


def test_preset_expands_through_the_real_command_line(tmp_path):
    """Every job fails at once on a bad device (a key left out of folder names), so nothing trains:
    this counts the folders the real sweeper makes, without -m (the preset sets hydra.mode)."""
    out = tmp_path / "sweep"
    proc = train(tmp_path, "experiment=compare_patterns", "trainer.device=none", f"hydra.sweep.dir={out}")
    assert proc.returncode == 1, proc.stderr[-2000:]  # SweepEnd: jobs did not complete
    assert job_dirs(out) == sorted(f"pattern={p},seed={s}" for p, s in itertools.product(PATTERNS, [0, 1, 2]))
    assert "15 of 15 jobs did not complete" in proc.stderr


# --- launchers: real two-job sweeps ---

LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=5"],
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


def test_sweep_jobs_complete_in_their_folders(sweep):
    _, out = sweep
    assert job_dirs(out) == [folder(TINY + [f"seed={s}"]) for s in (0, 1)]
    for s in (0, 1):
        summary = json.loads((out / folder(TINY + [f"seed={s}"]) / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["seed"] == s and summary["epochs_completed"] == 1


def test_sweep_jobs_use_their_share_of_cpu_threads(sweep):
    name, out = sweep
    for s in (0, 1):
        summary = json.loads((out / folder(TINY + [f"seed={s}"]) / "summary.json").read_text())
        assert summary.get("num_threads") == EXPECTED_THREADS[name], f"{name}, seed={s}"


# --- thread sharing ---

def launcher(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra.launcher


@pytest.mark.parametrize("cores, jobs, threads", [(16, 4, 4), (8, 3, 2), (2, 2, 1), (2, 4, 1), (1, 1, 1), (4, 0, 4)])
def test_threads_per_job_is_cores_over_jobs_at_least_one(cores, jobs, threads):
    assert threads_per_job(cores, jobs) == threads


@pytest.mark.parametrize("n_jobs, cores, threads", [(2, 8, 4), (4, 2, 1), (1, 8, 8), (-1, 8, 1), (-2, 8, 1),
                                                    (-8, 16, 1), (-12, 16, 3)])
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
        hc = SimpleNamespace(mode=mode, launcher=launcher("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
                             job=SimpleNamespace(num=0))
        place(cfg, hc)
        return cfg.trainer.num_threads

    assert placed("auto", RunMode.MULTIRUN) == threads_per_job(available_cores(), 2)
    assert placed(3, RunMode.MULTIRUN) == 3
    assert placed("auto", RunMode.RUN) == "auto"

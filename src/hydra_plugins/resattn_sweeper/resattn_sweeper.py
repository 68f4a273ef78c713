"""`hydra/sweeper=resattn` (the default in configs/config.yaml): Hydra's basic sweeper, made so that
running a sweep's command again into the same hydra.sweep.dir finishes the sweep.

Before the launcher sees a batch, each job's folder is worked out the way the launchers do it (the
job's sweep config from the config loader, hydra.sweep.dir / hydra.sweep.subdir), and
- a job whose summary.json says `completed` is skipped: the launcher never gets it, so no process,
  no data loading, and Hydra's run_job never rewrites its .hydra/*.yaml or appends to its log;
- a job with a checkpoint.pt resumes from it (the trainer does that itself with trainer.resume=auto);
- any other job runs as new.
One line per job says which. Hydra only loads plugins from the `hydra_plugins` namespace package,
which is why this lives here and not in resattn (docs/sweeps.md: "Rerunning a sweep finishes it").
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class ResattnSweeperConf:
    _target_: str = "hydra_plugins.resattn_sweeper.resattn_sweeper.ResattnSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="resattn", node=ResattnSweeperConf, provider="resattn")


@dataclass
class PlannedJob:
    """One job of a batch: its overrides, its number in the whole sweep, its folder and what to do."""
    overrides: list[str]
    num: int
    folder: Path
    summary: Optional[dict]
    action: str  # "skipped: completed", "resuming from epoch k" or "new"

    @property
    def skipped(self) -> bool:
        return self.action.startswith("skipped")


def job_config(config_loader, master: DictConfig, overrides: Sequence[str], num: int) -> DictConfig:
    """The job's config as a launcher composes it (BasicLauncher.launch, JoblibLauncher, submitit)."""
    cfg = config_loader.load_sweep_config(master, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.num = num
    return cfg


def job_folder(cfg: DictConfig) -> Path:
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def renumbered_folder(cfg: DictConfig, num: int) -> Path:
    """The folder the job would get as job `num`: it differs only if the subdir uses hydra.job.num."""
    with open_dict(cfg):
        cfg.hydra.job.num = num
    return job_folder(cfg)


def action(summary: Optional[dict], folder: Path, resume) -> str:
    if summary and summary.get("status") == "completed":
        return "skipped: completed"
    if resume == "auto" and (folder / "checkpoint.pt").is_file():
        epoch = (summary or {}).get("epochs_completed", "?")
        return f"resuming from epoch {epoch}"
    return "new"


def segments(jobs: list[PlannedJob], keep_numbers: bool) -> list[list[PlannedJob]]:
    """The jobs to launch, in launches. With keep_numbers, one launch per run of consecutive job
    numbers, so each job keeps its number (the launchers number a launch's jobs from initial_job_idx
    on); otherwise all in one launch, so a parallel launcher runs them all at once."""
    pending = [j for j in jobs if not j.skipped]
    if not keep_numbers:
        return [pending] if pending else []
    runs: list[list[PlannedJob]] = []
    for job in pending:
        if runs and runs[-1][-1].num == job.num - 1:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs


class FinishingLauncher:
    """Wraps the configured launcher (basic, joblib, submitit, fused...): launches only the jobs a
    sweep still needs, and answers for the skipped ones with their summary as the return value."""

    def __init__(self, launcher, config_loader, config: DictConfig) -> None:
        self.launcher = launcher
        self.config_loader = config_loader
        self.config = config

    def plan(self, batch: Sequence[Sequence[str]], initial_job_idx: int) -> tuple[list[PlannedJob], bool]:
        from resattn.tracking import read_summary  # torch: only once a sweep runs, not when Hydra scans plugins

        jobs, names_use_numbers = [], False
        for num, overrides in enumerate(batch, start=initial_job_idx):
            cfg = job_config(self.config_loader, self.config, overrides, num)
            folder = job_folder(cfg)
            summary = read_summary(folder)
            jobs.append(PlannedJob(list(overrides), num, folder, summary,
                                   action(summary, folder, cfg.get("trainer", {}).get("resume", "auto"))))
            names_use_numbers |= renumbered_folder(cfg, num + len(batch)) != folder
        return jobs, names_use_numbers

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs, names_use_numbers = self.plan(job_overrides, initial_job_idx)
        # after a batch, logging still writes to the last job's log file: back to the sweep's own logging
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        for job in jobs:
            log.info(f"#{job.num} {job.folder.name}: {job.action}")
        returns: dict[int, JobReturn] = {
            j.num: JobReturn(overrides=j.overrides, working_dir=str(j.folder), status=JobStatus.COMPLETED,
                             _return_value=j.summary) for j in jobs if j.skipped}
        for run in segments(jobs, keep_numbers=names_use_numbers):
            results = self.launcher.launch([j.overrides for j in run], initial_job_idx=run[0].num)
            returns.update((j.num, r) for j, r in zip(run, results))
        return [returns[j.num] for j in jobs]


class ResattnSweeper(BasicSweeper):
    """BasicSweeper (same params, same expansion, same job order) whose launcher skips finished jobs."""

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = FinishingLauncher(self.launcher, hydra_context.config_loader, config)

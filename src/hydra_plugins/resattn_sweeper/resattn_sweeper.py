"""`hydra/sweeper=resattn` (the default in configs/config.yaml): Hydra's basic sweeper, made so that
running a sweep's command again into the same hydra.sweep.dir finishes the sweep, and says so truly.

Before any job runs, every job of the command is composed the way the launchers compose it (the job's sweep
config from the config loader, its folder hydra.sweep.dir / hydra.sweep.subdir), and resattn.rerun decides:
- a job whose folder holds a complete run is skipped: the launcher never gets it, so no process, no data
  loading, and Hydra's run_job never rewrites its .hydra/*.yaml or appends to its log; a job whose summary
  says completed but whose files disagree is rerun from scratch; one with a checkpoint.pt resumes from it
  (the trainer does that itself with trainer.resume=auto); any other job runs as new;
- a job whose folder holds a run of another experiment refuses the whole rerun (exit 2, one line);
- the sweep's records (multirun.yaml, sweep.yaml) are written for a new sweep folder and rewritten only
  when the command runs every job they list; each run of the command is appended to pieces.yaml.
One line per job says which. Past trainer.deadline no new launch starts, and the sweep exits 124.
Hydra only loads plugins from the `hydra_plugins` namespace package, which is why this lives here and not
in resattn (docs/sweeps.md: "A study in pieces: rerun = finish").
"""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus, configure_log
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class ResattnSweeperConf:
    _target_: str = "hydra_plugins.resattn_sweeper.resattn_sweeper.ResattnSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="resattn", node=ResattnSweeperConf, provider="resattn")


class DeadlinePassed(Exception):
    """trainer.deadline passed before a launch: nothing more starts."""


def job_config(config_loader, master: DictConfig, overrides: Sequence[str], num: int) -> DictConfig:
    """The job's config as a launcher composes it (BasicLauncher.launch, JoblibLauncher, submitit)."""
    cfg = config_loader.load_sweep_config(master, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.num = num
    return cfg


def task_part(cfg: DictConfig) -> dict:
    """The config the job's task sees (all but the hydra node), resolved: what its .hydra/config.yaml records."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def job_folder(cfg: DictConfig) -> Path:
    """A sweep job's folder, as the launchers make it (the fused launcher too)."""
    HydraConfig.instance().set_config(cfg)  # the subdir's resolvers may read hydra:... of this job
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def renumbered_folder(cfg: DictConfig, num: int) -> Path:
    """The folder the job would get as job `num`: it differs only if the subdir uses hydra.job.num."""
    with read_write(cfg.hydra), open_dict(cfg):  # job_folder made it read-only, as Hydra's set_config does
        cfg.hydra.job.num = num
    return job_folder(cfg)


def segments(jobs: list, keep_numbers: bool, one_by_one: bool = False) -> list[list]:
    """The jobs to launch, in launches. With keep_numbers, one launch per run of consecutive job
    numbers, so each job keeps its number (the launchers number a launch's jobs from initial_job_idx
    on); one_by_one, one launch per job (a launcher that runs them one after another anyway); otherwise
    all in one launch, so a parallel launcher runs them all at once."""
    pending = [j for j in jobs if not j.skipped]
    if one_by_one:
        return [[job] for job in pending]
    if not keep_numbers:
        return [pending] if pending else []
    runs: list[list] = []
    for job in pending:
        if runs and runs[-1][-1].num == job.num - 1:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs


class FinishingLauncher:
    """Wraps the configured launcher (basic, joblib, submitit, fused...): launches only the jobs a
    sweep still needs, and answers for the skipped ones with their summary as the return value.
    With a deadline, no launch starts once it has passed (DeadlinePassed); a launcher that runs its jobs one
    after another (Hydra's basic one) gets them one per launch, so that holds between any two jobs."""

    def __init__(self, launcher, deadline=None) -> None:
        self.launcher, self.deadline = launcher, deadline

    def launch(self, jobs: list, keep_numbers: bool) -> Sequence[JobReturn]:
        from resattn import clock

        returns: dict[int, JobReturn] = {
            j.num: JobReturn(
                overrides=j.overrides, working_dir=str(j.folder), status=JobStatus.COMPLETED, _return_value=j.summary
            )
            for j in jobs
            if j.skipped
        }
        one_by_one = self.deadline is not None and isinstance(self.launcher, BasicLauncher)
        for run in segments(jobs, keep_numbers, one_by_one):
            if clock.passed(self.deadline):
                raise DeadlinePassed()
            results = self.launcher.launch([j.overrides for j in run], initial_job_idx=run[0].num)
            returns.update((j.num, r) for j, r in zip(run, results))
        return [returns[j.num] for j in jobs]


def started(job) -> bool:
    """Whether this piece started the job: Hydra's run_job, and the fused launcher, write its .hydra/ record as it
    starts, after the piece's start (resattn.clock)."""
    from resattn import clock

    record = job.folder / ".hydra" / "config.yaml"
    return record.is_file() and record.stat().st_mtime >= clock.STARTED


def not_started(jobs: list) -> int:
    """Jobs this piece was to run and never started."""
    return sum(1 for j in jobs if not j.skipped and not started(j))


def ending(err: BaseException) -> tuple[str, str]:
    """(how the piece ended, a note) for what ended its launches: pieces.ENDINGS."""
    from resattn.errors import Interrupted, StopSweep

    code = err.code if isinstance(err, (SystemExit, StopSweep)) else None
    if isinstance(err, DeadlinePassed) or code == Interrupted.DEADLINE_EXIT:
        return "deadline", ""
    if isinstance(err, KeyboardInterrupt):
        return "signal", "SIGINT"
    if isinstance(code, int) and code > 128:
        import signal

        return "signal", signal.Signals(code - 128).name
    return "error", f"{type(err).__name__}: {err}".splitlines()[0]


class ResattnSweeper(BasicSweeper):
    """BasicSweeper (same params, same expansion, same job order, same batches) that finishes a sweep."""

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.finishing = FinishingLauncher(self.launcher, OmegaConf.select(config, "trainer.deadline"))

    @property
    def sweep_dir(self) -> Path:
        return Path(str(self.config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> Any:
        from resattn.errors import ConfigError

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(
            parser.parse_overrides(self._parse_config() + list(arguments)), self.max_batch_size
        )
        made = [p for p in (self.sweep_dir, *self.sweep_dir.parents) if not p.exists()]  # deepest first
        try:
            batches, keep_numbers, records = self.plan()
        except ConfigError as err:  # nothing has run, and no file of an earlier sweep has changed
            if made:  # a new sweep: the records plan() wrote to name its jobs go, and the folders made for them
                from resattn.sweep import remove_new_sweep

                remove_new_sweep(made)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        return self.run_piece(batches, keep_numbers, records)

    def plan(self) -> tuple[list[list], bool, str]:
        """Every job of the command, by batch, planned (resattn.rerun); whether their folders depend on their
        numbers; and what becomes of the sweep's records: written (a new sweep folder), rewritten or kept.
        ConfigError when the rerun is refused."""
        from resattn import pieces, rerun
        from resattn.study import sweep_jobs
        from resattn.sweep import read_record, write_records

        pieces.read_pieces(self.sweep_dir)  # a history that cannot be read is not overwritten: refused here
        record = read_record(self.sweep_dir)
        if record is None:  # a new sweep: the job names come from its multirun.yaml (resattn.sweep)
            write_records(self.config)
            listed, records = None, "written"
        else:
            listed = {name: overrides for name, overrides in sweep_jobs(record)}
            records = rerun.records_action(list(listed), [name for name, _ in sweep_jobs(self.config)])
        batches, keep_numbers, first = [], False, 0
        for batch in self.overrides:
            planned = [
                self.planned(overrides, num, record, listed if records == "kept" else None)
                for num, overrides in enumerate(batch, start=first)
            ]
            keep_numbers |= any(renumbered for _, renumbered in planned)
            batches.append([job for job, _ in planned])
            first += len(batch)
        rerun.check_data([job for batch in batches for job in batch])
        return batches, keep_numbers, records

    def planned(self, overrides: list[str], num: int, record, listed: dict | None) -> tuple[Any, bool]:
        """The job (resattn.rerun.PlannedJob), checked against the run in its folder, or (`listed`: a rerun that
        keeps the sweep's records) against the job the records list under its name; and whether its folder
        depends on its number."""
        from resattn import rerun
        from resattn.tracking import read_summary

        cfg = job_config(self.hydra_context.config_loader, self.config, overrides, num)
        folder = job_folder(cfg)
        summary = read_summary(folder)
        job = rerun.PlannedJob(
            list(overrides),
            num,
            folder,
            summary,
            rerun.action(summary, folder, OmegaConf.select(cfg, "trainer.resume")),
            OmegaConf.to_container(cfg.data, resolve=True),
        )
        if listed is not None and folder.name not in listed:
            raise rerun.not_listed(job, self.sweep_dir, len(listed))
        if job.holds_a_run:
            rerun.compare_with_run(job, task_part(cfg), cfg.hydra.runtime.choices)
        elif listed is not None:
            recorded = job_config(self.hydra_context.config_loader, record, listed[folder.name], num)
            rerun.compare_with_record(job, task_part(recorded), task_part(cfg))
        if job.kind == "new" or job.kind == "rerun":  # every job it will train is checked before any trains
            rerun.check_job(job, cfg)
        if job.kind == "rerun":
            job.overrides = rerun.from_scratch(job.overrides)
        return job, renumbered_folder(cfg, num + 1) != folder

    def run_piece(self, batches: list[list], keep_numbers: bool, records: str) -> list:
        """Record the piece, say what happens to each job, launch the batches; the piece's end, however it comes."""
        from resattn import pieces
        from resattn.sweep import write_records

        jobs = [j for batch in batches for j in batch]
        if records == "rewritten":
            write_records(self.config)
        pieces.start(
            self.sweep_dir,
            list(self.config.hydra.overrides.task),
            {kind: sum(j.kind == kind for j in jobs) for kind in pieces.JOB_KINDS},
            records,
        )
        log.info(
            f"sweep records {records}; piece {len(pieces.read_pieces(self.sweep_dir))} in "
            f"{self.sweep_dir / pieces.FILE}"
        )
        for job in jobs:
            log.info(f"#{job.num} {job.folder.name}: {job.action}")
        try:
            returns = [self.launch_batch(batch, keep_numbers) for batch in batches]
        except BaseException as err:
            ended_by, note = ending(err)
            if ended_by == "deadline":
                # a job stopped mid-run leaves logging on its own log file: back to the sweep's own logging
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
                log.info(f"deadline passed: {not_started(jobs)} jobs not started; run the same command to continue")
            pieces.end(self.sweep_dir, ended_by, note, not_started(jobs))
            from resattn.errors import Interrupted, StopSweep

            if isinstance(err, DeadlinePassed):
                sys.exit(Interrupted.DEADLINE_EXIT)  # as a job stopped by the deadline exits
            if isinstance(err, StopSweep):  # a joblib worker's stop, once every worker has saved
                sys.exit(err.code)
            raise
        pieces.end(self.sweep_dir, "finished", not_started=not_started(jobs))
        return returns

    def launch_batch(self, batch: list, keep_numbers: bool) -> Sequence[JobReturn]:
        results = self.finishing.launch(batch, keep_numbers)
        for r in results:  # as BasicSweeper: a job that raised raises here
            _ = r.return_value
        return results

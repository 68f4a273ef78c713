"""`hydra/launcher=fused`: the jobs of a sweep that differ only in seed (and pattern.lam_init) train as the
members of one process and one stacked model (resattn.members), so seeds cost a fraction of a run each.

    python -m train -m experiment=compare_patterns seed=0,1,2,3,4,5,6,7,8,9 hydra/launcher=fused
    ... hydra.launcher.n_jobs=3        # groups side by side, each in its own process
    ... hydra.launcher.max_members=5   # at most 5 members in one group

Every member is an ordinary job to everything after it: its own folder (named as without fusion), its
.hydra/ record, log, events, checkpoint.pt and summary.json (with `members`: how many trained together).
Jobs whose network, data or schedule differ form groups of their own; a job alone in its group trains as one
member. Every job of the launcher trains in one precision (fp32 under trainer.precision=auto: bf16 autocast
does not reach convolutions under vmap), a job alone in its group too, so a report never splits an arm by
precision. A job whose config or checkpoint is refused fails alone, not its group. Hydra's on_job_start/on_job_end
callbacks are not called for fused jobs (this project has none; SweepEnd acts at the sweep's start and end).
"""

import logging
import math
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, _save_config, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.resattn_sweeper.resattn_sweeper import job_folder

log = logging.getLogger(__name__)


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.resattn_fused_launcher.fused_launcher.FusedLauncher"
    n_jobs: int = 1  # processes, each training one group at a time
    max_members: int = 10  # most jobs in one group


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="resattn")


def task_config(sweep_config: DictConfig) -> DictConfig:
    """The config the task sees: everything but the hydra node (as run_job gives it)."""
    return OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])


def group_jobs(configs: list[DictConfig], max_members: int) -> list[list[int]]:
    """Indices of the jobs that train together, in sweep order: same fusion key and same progress (the step
    their summary.json reached: members resume together), in groups of near-equal size, at most max_members each
    (11 jobs at most 10: 6 and 5, not 10 and 1)."""
    from resattn.members import fusion_key

    keys: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        refused = refusal(cfg)
        key = (fusion_key(task_config(cfg)), resume_step(cfg)) if refused is None else ("refused", i)
        keys.setdefault(key, []).append(i)
    groups = []
    for jobs in keys.values():
        n = math.ceil(len(jobs) / max_members)
        groups += [jobs[k * len(jobs) // n : (k + 1) * len(jobs) // n] for k in range(n)]
    return sorted(groups, key=lambda g: g[0])


def resume_step(cfg: DictConfig) -> int:
    """The step a job resumes from: its summary's where its folder holds a checkpoint to resume, else 0."""
    from resattn.tracking import read_summary

    folder = job_folder(cfg)
    if cfg.trainer.resume != "auto" or not (folder / "checkpoint.pt").is_file():
        return 0
    return (read_summary(folder) or {}).get("step", 0)


def refusal(cfg: DictConfig) -> str | None:
    """Why the job would be refused (its config fails resattn's checks, or its checkpoint cannot be resumed), or
    None: a refused job trains alone, so its error is its own and its group's other members train."""
    from resattn import checkpoint, records
    from resattn.config import validate
    from resattn.errors import ConfigError

    task = task_config(cfg)
    try:
        validate(task)
        path = records.resume_path(task.trainer.resume, job_folder(cfg) / records.CHECKPOINT)
        if path is not None:
            checkpoint.load(path, records.resolved(task))
    except ConfigError as err:
        return str(err)
    return None


def splitting_keys(configs: list[DictConfig]) -> list[str]:
    """Config keys that vary across the jobs and keep them apart (all but the fusable ones)."""
    from resattn.errors import flatten
    from resattn.members import FUSABLE_KEYS

    flat = [flatten(OmegaConf.to_container(task_config(c), resolve=True)) for c in configs]
    keys = dict.fromkeys(k for f in flat for k in f)
    return [
        k
        for k in keys
        if k not in FUSABLE_KEYS and len({repr(f.get(k)) for f in flat}) > 1 and not k.startswith("tracking.")
    ]


def start_member(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """What Hydra's run_job does before calling the task: the job's folder and its .hydra/ record."""
    run_dir = job_folder(cfg)
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(run_dir.resolve())
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    task_cfg = task_config(cfg)
    if cfg.hydra.output_subdir is not None:
        record = run_dir / str(cfg.hydra.output_subdir)
        _save_config(task_cfg, "config.yaml", record)
        _save_config(HydraConfig.instance().cfg, "hydra.yaml", record)
        _save_config(cfg.hydra.overrides.task, "overrides.yaml", record)
    return task_cfg, run_dir


def train_group(sweep_configs: list[DictConfig], singleton_state: dict | None = None) -> list[dict | None]:
    """Train one group (in this process, or in a worker given Hydra's singletons); each member's summary, None
    where it did not complete (plain data: a worker's results travel back pickled)."""
    from resattn.job import run_jobs
    from resattn.job_records import HeldFileHandler  # released, with the group's records, when the group starts

    if singleton_state is not None:  # a spawned worker: Hydra's singletons, and resattn's resolvers registered
        from resattn.sweep import register_resolvers

        Singleton.set_state({**singleton_state, "omegaconf_resolvers": {}})
        setup_globals()  # Hydra's own resolvers (now, hydra, ...)
        register_resolvers()
    started = [start_member(cfg) for cfg in sweep_configs]
    HydraConfig.instance().set_config(sweep_configs[0])
    configure_log(sweep_configs[0].hydra.job_logging, sweep_configs[0].hydra.verbose)
    root = logging.getLogger()
    files = [
        HeldFileHandler(run_dir / f"{cfg.hydra.job.name}.log")
        for cfg, (_, run_dir) in zip(sweep_configs[1:], started[1:])
    ]
    for handler in files:  # each member's own log file gets the group's lines too
        handler.setFormatter(root.handlers[0].formatter if root.handlers else None)
        root.addHandler(handler)
    try:
        summaries = run_jobs([c for c, _ in started], [d for _, d in started], HydraConfig.get(), fused=True)
    finally:
        for handler in files:
            root.removeHandler(handler)
            handler.close()
    return summaries


def job_return(cfg: DictConfig, summary: dict | None) -> JobReturn:
    """What Hydra's run_job returns for a job: its configs, overrides and the task's return value."""
    ret = JobReturn(
        overrides=list(cfg.hydra.overrides.task),
        cfg=task_config(cfg),
        hydra_cfg=OmegaConf.create({"hydra": cfg.hydra}),
        working_dir=os.getcwd(),
        task_name=cfg.hydra.job.name,
        status=JobStatus.COMPLETED,
    )
    ret.return_value = summary
    return ret


class FusedLauncher(Launcher):
    def __init__(self, n_jobs: int = 1, max_members: int = 10) -> None:
        from resattn.launchers import check_fused_setting  # the command line's are checked before Hydra starts

        check_fused_setting("n_jobs", n_jobs)
        check_fused_setting("max_members", max_members)
        self.n_jobs, self.max_members = n_jobs, max_members
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for i, overrides in enumerate(job_overrides):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = f"{cfg.hydra.job.name}_{initial_job_idx + i}"
                cfg.hydra.job.num = initial_job_idx + i
            configs.append(cfg)
        groups = group_jobs(configs, self.max_members)
        self.describe(configs, groups)
        if self.n_jobs == 1 or len(groups) == 1:
            results = [train_group([configs[i] for i in group]) for group in groups]
        else:
            results = self.in_workers([[configs[i] for i in group] for group in groups])
        summaries = {i: summary for group, result in zip(groups, results) for i, summary in zip(group, result)}
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # the sweep's own log again
        return [job_return(configs[i], summaries[i]) for i in range(len(configs))]

    def describe(self, configs: list[DictConfig], groups: list[list[int]]) -> None:
        split = splitting_keys(configs)
        log.info(
            "fused launcher: %d jobs in %d groups, %d process(es)%s",
            len(configs),
            len(groups),
            min(self.n_jobs, len(groups)),
            f"; kept apart by {', '.join(split)}" if split else "",
        )
        for group in groups:
            names = [job_folder(configs[i]).name for i in group]
            kind = f"{len(group)} fused members" if len(group) > 1 else "alone (no other job to fuse with)"
            log.info("\t%s: %s", kind, "; ".join(names))

    def in_workers(self, groups: list[list[DictConfig]]) -> list[list[dict | None]]:
        """Groups side by side in n_jobs spawned processes; a signal to this process is passed on to them
        (each saves its members and stops), and the first stop ends the sweep, as with one process."""
        # OmegaConf's resolvers do not pickle: the workers register Hydra's and resattn's again (train_group)
        state = {"instances": Singleton.get_state()["instances"]}
        # Workers in process groups of their own: a Ctrl-C reaches them once, forwarded from here, so each
        # saves its members (a second signal would make them exit at once, unsaved).
        pool = ProcessPoolExecutor(self.n_jobs, mp_context=get_context("spawn"), initializer=os.setpgrp)
        forward = lambda signum, frame: [os.kill(pid, signum) for pid in list(pool._processes)]  # noqa: E731
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            futures = [pool.submit(train_group, group, state) for group in groups]
            return [f.result() for f in futures]
        except SystemExit:  # a stop: groups not yet started never start; those running have saved
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            for s, handler in previous.items():
                signal.signal(s, handler)

"""One Hydra job: where it runs (threads, GPU) and how it ends (summary status, exit code).

A single run exits non-zero on failure. In a multirun a failing job is recorded in its
summary.json and the sweep goes on; `resattn.callbacks.SweepEnd` sets the exit code at the end.
"""

import difflib
import importlib.util
import logging
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from resattn import clock, job_records
from resattn.config import CONFIGS, inert_keys, inert_keys_message, moved_keys, validate
from resattn.engine import train_members
from resattn.errors import ConfigError, Diverged, Interrupted, StopSweep
from resattn.launchers import check_launching, hydra_group_options
from resattn.sweep import recorded_varied_keys  # importing it registers the resolver naming sweep jobs
from resattn.tracking import read_summary, write_json

log = logging.getLogger(__name__)

# hydra/launcher choice -> (plugin module, pip extra)
LAUNCHERS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "parallel"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),  # configs/hydra/launcher/slurm.yaml
}


def usage_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def article(word: str) -> str:
    """'an' before a vowel, else 'a' (for error lines such as "is not an attention config")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _is_sweep_value(value: str) -> bool:
    """Whether a command-line value asks for several runs: a comma outside brackets and quotes
    (pattern=p1,p3), or one of Hydra's sweep functions (range(...), choice(...), ...)."""
    if value.startswith(("range(", "choice(", "glob(", "interval(")):
        return True
    depth, quote = 0, None
    for char in value:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return False


def _asks_for_multirun(args: list[str]) -> bool:
    """-m on the command line, hydra.mode=MULTIRUN, or a preset that sets it (configs/experiment/*.yaml)."""
    if "-m" in args or "--multirun" in args or "hydra.mode=MULTIRUN" in args:
        return True
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        preset = CONFIGS / "experiment" / f"{value}.yaml"
        if key == "experiment" and preset.is_file() and "mode: MULTIRUN" in preset.read_text():
            return True
    return False


def check_choices(argv: list[str] | None = None) -> None:
    """One clear line, before Hydra starts, for a config-group choice that does not exist
    (Hydra's own message spans a screen), a list of values without -m, a launcher whose
    plugin is not installed, or a launcher, sweeper or output folder Hydra would refuse late (launchers.py)."""
    args = sys.argv[1:] if argv is None else argv
    for message in moved_keys(args):
        usage_error(message)
    multirun = _asks_for_multirun(args)
    if not multirun:
        for arg in args:
            key, _, value = arg.lstrip("+~").partition("=")
            if not arg.startswith("-") and _is_sweep_value(value):
                usage_error(f"{key}={value}: a list of values needs -m (multirun): python -m train -m {arg}")
    roots = config_roots(args)
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra/launcher" and value in LAUNCHERS:
            module, extra = LAUNCHERS[value]
            if importlib.util.find_spec(module) is None:
                usage_error(f'hydra/launcher={value} needs its plugin: pip install -e ".[{extra}]"')
        allowed = group_options(key, roots) if value and not arg.startswith("-") else None
        # a sweep gives a comma-separated list; Hydra's sweep functions (range, glob...) are left to Hydra
        for choice in value.split(",") if allowed is not None and "(" not in value else []:
            if choice not in allowed and choice != "null":
                usage_error(unknown_choice(key, choice, allowed))
    try:
        check_launching(args, multirun)
    except ConfigError as err:
        usage_error(str(err))


def group_options(key: str, roots: list[Path] | None) -> list[str] | None:
    """The options of config group `key` (pattern: baseline, p1, ...; hydra/launcher: Hydra's), None where `key`
    is no group or its options cannot be listed here (a pkg:// search path)."""
    if key.startswith("hydra/"):
        return hydra_group_options(key)
    if "/" in key or "." in key or not roots or not (CONFIGS / key).is_dir():
        return None
    return sorted({p.stem for root in roots for p in (root / key).glob("*.yaml")})


def unknown_choice(key: str, choice: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(choice, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {key}={close[0]}? " if close else ""
    return (
        f"{key}={choice} is not {article(key)} {key} config; {hint}choose one of "
        f"{', '.join(allowed) or f'none yet (configs/{key}/README.md)'}"
    )


def config_roots(args: list[str]) -> list[Path] | None:
    """The folders Hydra reads config groups from: configs/, --config-dir and every file:// entry of
    hydra.searchpath on the command line; None when one is a package (pkg://), which only Hydra can list."""
    roots = [CONFIGS]
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            roots.append(Path(args[i + 1]))
        elif arg.startswith("--config-dir="):
            roots.append(Path(arg.partition("=")[2]))
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            for entry in arg.partition("=")[2].strip("[]").split(","):
                entry = entry.strip().strip("'\"")
                if not entry.startswith("file://"):
                    return None
                roots.append(Path(entry.removeprefix("file://")))
    return roots


def available_cores() -> int:
    """Cores this process may use: a container's or SLURM's CPU set, not the whole node."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(cores: int, parallel_jobs: int) -> int:
    return max(1, cores // max(1, parallel_jobs))


def cpu_threads(launcher: DictConfig, cores: int) -> int | None:
    """CPU threads for one job of a sweep run by `launcher`; None leaves torch's default."""
    target = str(launcher.get("_target_", ""))
    if launcher.get("cpus_per_task"):  # submitit: the cores SLURM (or the local executor) gives each job
        return int(launcher.cpus_per_task)
    if "Joblib" in target or "Fused" in target:  # n_jobs processes side by side
        n = int(launcher.get("n_jobs") or 1)
        return threads_per_job(cores, cores + 1 + n if n < 0 else n)
    return None


def stop(code: int, hc) -> NoReturn:
    """End the job with exit `code`, which ends its sweep too. In a joblib worker the stop is raised instead:
    Hydra's run_job records it as the job's outcome and the worker goes on, so the other workers reach their
    own stop and save (a SystemExit there makes joblib abandon them mid-step, `running` for good); the resattn
    sweeper then exits with `code` (hydra_plugins.resattn_sweeper)."""
    if "Joblib" in str(hc.launcher.get("_target_", "")):
        raise StopSweep(code)
    sys.exit(code)


def place(cfg: DictConfig, hc) -> None:
    """Share the machine among a sweep's jobs: threads on CPU, one GPU each by job number."""
    t = cfg.trainer
    with open_dict(cfg):
        if t.num_threads == "auto" and hc.mode == RunMode.MULTIRUN:
            threads = cpu_threads(hc.launcher, available_cores())
            if threads is not None:
                t.num_threads = threads
        if t.device == "auto" and hc.mode == RunMode.MULTIRUN and torch.cuda.device_count() > 1:
            t.device = f"cuda:{hc.job.num % torch.cuda.device_count()}"


def submitit_requeue() -> tuple[int, object] | None:
    """(signal, handler) of submitit's own handler in a submitit job (hydra/launcher=slurm): on SLURM's warning
    before the time limit (USR2, `signal_delay_s` early) it resubmits the job through the launcher's checkpoint()
    and requeues it, or, once the job has timed out `max_num_timeout` times, raises UncompletedJobError."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    from submitit import JobEnvironment

    signum = JobEnvironment._usr_sig()
    handler = signal.getsignal(signum)
    return (signum, handler) if callable(handler) else None


@contextmanager
def stop_on_signals(requeue: tuple[int, object] | None = None):
    """First SIGINT/SIGTERM (or submitit's `requeue` signal): ask the training loop to stop after its current
    step. Second: exit at once. Left to itself, submitit's handler acts mid-step: a requeued job lost the epoch so
    far, and one past max_num_timeout was recorded failed with submitit's error."""
    received: list[int] = []

    def handler(signum, frame):
        if received:
            os._exit(128 + signum)
        received.append(signum)

    stops = (signal.SIGINT, signal.SIGTERM, *([requeue[0]] if requeue else []))
    previous = {s: signal.signal(s, handler) for s in stops}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def record_failure(run_dir: Path, cfg: DictConfig, error: str) -> bool:
    """Mark the run failed, unless its folder holds an earlier run's outcome (a relaunch refused
    for a bad value must not turn a completed or interrupted run into a failed one); whether it wrote."""
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") != "running":
        return False
    summary = summary or {
        "pattern": cfg.pattern.get("name"),
        "controlled": cfg.pattern.get("controlled"),
        "lam_init": cfg.pattern.get("lam_init"),
        "lam_learnable": cfg.pattern.get("lam_learnable"),
        "seed": cfg.get("seed"),
        "epochs": cfg.trainer.get("epochs"),
        "epochs_completed": 0,
    }
    summary.update(status="failed", error=error)
    write_json(run_dir / "summary.json", summary)
    return True


def record_failures(cfgs: list[DictConfig], run_dirs: list[Path], error: str) -> None:
    """Each run failed: a folder that now records the failure gets this job's Hydra record and log with it;
    a folder holding an earlier run's outcome is left as it was."""
    wrote = [record_failure(d, cfg, error) for cfg, d in zip(cfgs, run_dirs)]
    job_records.keep([d for d, w in zip(run_dirs, wrote) if w])
    job_records.drop([d for d, w in zip(run_dirs, wrote) if not w])


def discard_unstarted(run_dir: Path) -> bool:
    """Drop the Hydra record of a job refused before it started, and its folder if that leaves it empty (a
    checkpoint, events or summary of an earlier run in it stay, and so does its .hydra/ record)."""
    job_records.drop([run_dir])
    if run_dir.resolve() == Path.cwd().resolve() or any(run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir)
    remove_empty_parents(run_dir)
    return True


def remove_empty_parents(run_dir: Path) -> None:
    """The folders above a discarded run that it alone made: the date folder of outputs/runs/DATE/TIME,
    then (inside the working directory only) outputs/runs/ and outputs/ when nothing else is in them."""
    cwd = Path.cwd().resolve()
    for i, parent in enumerate(run_dir.resolve().parents):
        if parent == cwd or (i > 0 and cwd not in parent.parents):
            return
        try:
            parent.rmdir()
        except OSError:  # not empty: another run's, or the user's
            return


def warn_inert_keys(cfg: DictConfig, overrides) -> None:
    """One log line for λ keys given to a run without a controlled gate (they would do nothing, silently);
    a config that fails validation gets its error instead, from train()."""
    try:
        validate(cfg)
    except ConfigError:
        return
    keys = inert_keys(cfg, overrides)
    if keys:
        log.warning(inert_keys_message(cfg, keys))


def requeue_or_end(requeue: tuple[int, object], where, jobs: int) -> list[None]:
    """The run has saved at its step: now submitit's handler requeues the job (it exits; SLURM starts it again, and
    it resumes), or says no requeue is left. Then the job returns, recorded interrupted, so the waiting sweep gets
    its result (a job that exits without one leaves the sweep waiting) and reports it; the same command resumes."""
    from submitit.core.utils import UncompletedJobError

    signum, handler = requeue
    try:
        handler(signum, None)
    except UncompletedJobError as err:
        print(
            f"interrupted by the time limit ({err}): checkpoint saved in {where}; run the same command to resume",
            file=sys.stderr,
        )
    return [None] * jobs


def run(cfg: DictConfig) -> dict | None:
    """Run one job; its summary (the task function's return value, which a sweeper such as Optuna reads),
    or None when it did not complete."""
    hc = HydraConfig.get()
    warn_inert_keys(cfg, hc.overrides.task)
    return run_jobs([cfg], [Path(hc.runtime.output_dir)], hc)[0]


def run_jobs(cfgs: list[DictConfig], run_dirs: list[Path], hc, fused: bool = False) -> list[dict | None]:
    """Run jobs as the members of one training process (one job: an ordinary run); each job's summary, None
    where it did not complete. `hc`: the Hydra config of the first job (mode, launcher, sweep folder); `fused`:
    the fused launcher's jobs (one precision for all, engine.train_members)."""
    multirun = hc.mode == RunMode.MULTIRUN
    if clock.passed(cfgs[0].trainer.get("deadline")):  # a job a launcher started past the piece's deadline
        for run_dir in run_dirs:
            discard_unstarted(run_dir)
        print(
            "trainer.deadline passed before this job started: nothing trained; run the same command to continue",
            file=sys.stderr,
        )
        stop(Interrupted.DEADLINE_EXIT, hc)
    varied = sorted(k.lstrip("+") for k in recorded_varied_keys(hc.sweep.dir) or ()) if multirun else None
    for cfg in cfgs:
        place(cfg, hc)
        if multirun:  # the HParams columns TensorBoard shows first
            with open_dict(cfg):
                cfg.tracking.varied = varied
    requeue = submitit_requeue()
    try:
        with stop_on_signals(requeue) as signals:
            summaries = train_members(cfgs, run_dirs, signals, fused, on_start=lambda: job_records.keep(run_dirs))
        if signals and not (requeue and signals[0] == requeue[0]):
            stop(128 + signals[0], hc)  # it came during the last evaluation: the runs are complete, and it ends a sweep
        return [s if s["status"] == "completed" else None for s in summaries]
    except Interrupted as err:
        where = run_dirs[0] if len(run_dirs) == 1 else f"the {len(run_dirs)} members' folders"
        if requeue and err.signum == requeue[0]:
            return requeue_or_end(requeue, where, len(cfgs))
        print(f"interrupted by {err}: checkpoint saved in {where}; run the same command to resume", file=sys.stderr)
        stop(err.exit_code, hc)  # a stop request ends a sweep too
    except ConfigError as err:
        if not multirun and discard_unstarted(run_dirs[0]):
            usage_error(str(err))  # no run happened: nothing is left in outputs/runs/
        record_failures(cfgs, run_dirs, str(err))
        if not multirun:
            usage_error(str(err))
        print(f"error: {err}", file=sys.stderr)
    except Diverged as err:  # every member diverged; their summaries already say so
        print(f"error: {err}", file=sys.stderr)
        if not multirun:
            sys.exit(1)
    except StopSweep:  # a stop at the very end of a joblib job: its runs completed (above)
        raise
    except Exception as err:
        line = f"{type(err).__name__}: {err}".splitlines()[0]
        record_failures(cfgs, run_dirs, line)
        if not multirun:
            raise
        log.exception("job failed: %s", line)  # the traceback goes to the job's log file
        print(f"error: job {hc.job.num} failed: {line}", file=sys.stderr)
    return [None] * len(cfgs)

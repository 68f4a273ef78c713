"""Rerun = finish: what a sweep's command, run again into its hydra.sweep.dir, does with each job and with the
sweep's records (docs/sweeps.md, "A study in pieces"). The resattn sweeper (src/hydra_plugins/resattn_sweeper)
composes each job and launches; this decides, from the job's composed config and the files in its folder.

- A job whose folder holds a complete run (tracking.completion) is skipped; one whose summary says completed
  but whose files disagree is rerun from scratch; one with a checkpoint resumes; any other runs as new.
- A job whose folder holds a run (completed, or one to resume) must be the experiment that run was
  (identity.first_difference, the one definition): otherwise the whole rerun is refused before any job runs.
- The sweep's records (multirun.yaml, sweep.yaml) are rewritten only when the command runs every job they list;
  a command that runs only some of them keeps them, and its jobs must be jobs they list, as they list them.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from resattn.config import validate
from resattn.errors import ConfigError, flatten
from resattn.identity import first_difference
from resattn.report.runs import fmt_value, read_config
from resattn.tracking import completion

RESUME = "trainer.resume"
WAY_OUT = "or give a new hydra.sweep.dir"


@dataclass
class PlannedJob:
    """One job of the sweep: its overrides, its number in the whole sweep, its folder and what to do."""

    overrides: list[str]
    num: int
    folder: Path
    summary: dict | None
    action: str  # "skipped: completed", "resuming from epoch k", "new" or "rerun from scratch: <why>"
    data: dict | None = None  # its resolved data config: jobs with the same one train on the same images

    @property
    def kind(self) -> str:
        """skipped, resumed, new or rerun (pieces.JOB_KINDS)."""
        return {"skipped": "skipped", "resuming": "resumed", "rerun": "rerun"}.get(
            self.action.split()[0].strip(":"), "new"
        )

    @property
    def skipped(self) -> bool:
        return self.kind == "skipped"

    @property
    def holds_a_run(self) -> bool:
        """A run this command would keep or finish (its summary says completed, or it resumes)."""
        return self.kind != "new"


def action(summary: dict | None, folder: Path, resume) -> str:
    summary = summary if isinstance(summary, dict) else None  # a summary.json that holds no object: unreadable
    if summary and summary.get("status") == "completed":
        why = completion(folder)
        return "skipped: completed" if why is None else f"rerun from scratch: {why}"
    if summary and summary.get("status") == "diverged":  # a result: resumed, it would diverge again
        return f"skipped: diverged at step {summary.get('step', '?')} (a new hydra.sweep.dir trains it again)"
    if resume == "auto" and (folder / "checkpoint.pt").is_file():
        epoch = (summary or {}).get("epochs_completed", "?")
        return f"resuming from epoch {epoch}"
    return "new"


def from_scratch(overrides: list[str]) -> list[str]:
    """The job's overrides with trainer.resume=false (in place of any it had): a run whose summary says completed
    but whose files disagree trains again from its first step, its old events purged (engine.open_tracker)."""
    return [o for o in overrides if o.lstrip("+~").partition("=")[0] != RESUME] + [f"{RESUME}=false"]


def setting(key: str, value) -> str:
    return f"{key}={fmt_value(value)}" if value is not None else f"no {key}"


def difference(theirs: dict, ours: dict) -> tuple[str, str] | None:
    """(old setting, new setting), as key=value, of the first key defining the experiment that differs between
    two configs (identity.first_difference); None when they are the same experiment."""
    theirs, ours = flatten(theirs), flatten(ours)
    key = first_difference(theirs, ours)
    return None if key is None else (setting(key, theirs.get(key)), setting(key, ours.get(key)))


def group_difference(folder: Path, choices) -> tuple[str, str] | None:
    """(old, new) as group=option for the first config group (not Hydra's own) whose choice differs between the run
    in `folder` (its .hydra/hydra.yaml) and this command's `choices` (hydra.runtime.choices): a group's keys are
    changed by choosing its option, so that is the setting to give back (attention=cbam, not attention.name=cbam)."""
    try:
        ran = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra.runtime.choices
    except Exception:
        return None
    for group, option in choices.items():
        if not group.startswith("hydra/") and ran.get(group) != option:
            return f"{group}={ran.get(group)}", f"{group}={option}"
    return None


def compare_with_run(job: PlannedJob, task: dict, choices) -> None:
    """ConfigError (the one line) when the run in the job's folder is another experiment than the job's config
    `task` (resolved, without the hydra node): the group choice or else the first key that differs, its old and
    new value, the way out."""
    try:
        ran = read_config(job.folder)
    except Exception as err:
        raise ConfigError(
            f"rerun refused, no job started: {job.folder} holds a run whose .hydra/config.yaml cannot "
            f"be read ({type(err).__name__}), so it cannot be compared with this command; restore it, "
            f"move the folder away, {WAY_OUT}"
        ) from None
    differs = difference(ran, task)
    if differs:
        differs = group_difference(job.folder, choices) or differs
        raise ConfigError(
            f"rerun refused, no job started: {job.folder} ran with {differs[0]}, this command gives "
            f"{differs[1]}; give {differs[0]} to finish the sweep as it ran, {WAY_OUT} for the new "
            "setting"
        )


def compare_with_record(job: PlannedJob, listed: dict, task: dict) -> None:
    """ConfigError when a job of a command that keeps the sweep's records is not the job they list (`listed`, the
    record's own composition of it): the records would no longer say how the sweep's runs were made."""
    differs = difference(listed, task)
    if differs:
        raise ConfigError(
            f"rerun refused, no job started: {job.folder} is listed in the sweep's multirun.yaml with "
            f"{differs[0]}, this command gives {differs[1]}; give {differs[0]}, give every job of the "
            f"sweep (to rewrite its records), {WAY_OUT}"
        )


def not_listed(job: PlannedJob, sweep_dir: Path, listed: int) -> ConfigError:
    """A job that a command running only some of the sweep's jobs adds: the records it keeps would not list it."""
    return ConfigError(
        f"rerun refused, no job started: {job.folder.name} is not one of the {listed} jobs the "
        f"multirun.yaml of {sweep_dir} lists, and this command leaves out some of those; give every "
        f"job of the sweep and the new ones (to widen it), only jobs it lists, {WAY_OUT}"
    )


def records_action(listed: list[str], commanded: list[str]) -> str:
    """What a rerun does with the sweep's records: `rewritten` when the command runs every job they list and more
    (a widened sweep), else `kept` (the same sweep run again, or a narrowed one: its launcher and logging settings
    belong to no job the records list)."""
    return "rewritten" if set(listed) < set(commanded) else "kept"


def check_data(jobs: list[PlannedJob]) -> None:
    """ConfigError when jobs this command would train share their data config with runs of the sweep that trained
    on other images (their summaries' data_fingerprint): the sweep's data is one fact, checked before any job
    trains, not job by job as each resumes. A moved copy of the same images has the same fingerprint."""
    from resattn import data  # torch and the image decoders: only for a rerun that has runs to compare with

    groups: dict[str, list[PlannedJob]] = {}
    for job in jobs:
        groups.setdefault(json.dumps(job.data, sort_keys=True, default=str), []).append(job)
    for members in groups.values():
        recorded = {
            j.summary["data_fingerprint"]
            for j in members
            if isinstance(j.summary, dict) and j.summary.get("data_fingerprint")
        }
        if not recorded or all(j.skipped for j in members):
            continue
        if data.load(OmegaConf.create(members[0].data)).fingerprint not in recorded:
            ran = next(j for j in members if isinstance(j.summary, dict) and j.summary.get("data_fingerprint"))
            raise ConfigError(
                f"rerun refused, no job started: {ran.folder.name} trained on other images than "
                f"data.root={members[0].data.get('root')} holds now; give the images the sweep ran on, "
                f"{WAY_OUT}"
            )


def check_job(job: PlannedJob, cfg) -> None:
    """ConfigError naming the job when its config is invalid (config.validate): a sweep with one bad value refuses
    before any of its jobs trains."""
    try:
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{job.folder.name}: {err}; no job started") from None

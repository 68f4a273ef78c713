"""A study in pieces: which jobs of a sweep are done, how long the rest will take, a copy of the sweep small
enough to take off the machine, and its runs as rows of the published table (scripts/study.py).

Every job of the sweep comes from its multirun.yaml, expanded as Hydra's basic sweeper (and the resattn
sweeper) expands it, and named as the `resattn.job_name` resolver names it: so a job that never
started shows too.
"""

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import OmegaConf
from rich.table import Table

from resattn import pieces, robustness
from resattn.errors import ConfigError
from resattn.identity import REPLICATE_KEY
from resattn.report.runs import find_run_dirs, read_config, read_run
from resattn.report.tables import write_csv
from resattn.sweep import job_name, parse, read_record, sweeper_params, varied_keys
from resattn.tracking import completion, drop_images, read_summary

CHECKPOINT = "checkpoint.pt"


class StudyError(Exception):
    """A bad input: one line naming what is wrong."""


@dataclass
class JobStatus:
    name: str
    # completed, interrupted, diverged, failed, running or missing; incomplete (its summary says completed, its
    # files disagree: a rerun trains it again from scratch) or unreadable (a summary.json that cannot be read)
    state: str
    epochs_done: int
    epochs: int | None
    # this job's own share of the time per epoch (a fused member's: its group's time over the members), else the
    # sweep's mean (estimated): summed over a fused group's members, the group's time
    seconds_per_epoch: float | None
    estimated: bool = False
    reason: str = ""  # why an incomplete or unreadable job is not complete (tracking.completion)

    @property
    def remaining_s(self) -> float | None:
        """Time a rerun still needs for this job: the epochs it has left (all but a completed job's)."""
        if self.state == "completed":
            return 0.0
        if self.epochs is None or self.seconds_per_epoch is None:
            return None
        return max(0, self.epochs - self.epochs_done) * self.seconds_per_epoch

    def describe(self) -> str:
        progress = f"{self.epochs_done}/{self.epochs if self.epochs is not None else '?'}"
        if self.state == "interrupted":
            return f"interrupted at epoch {progress}"
        bare = ("completed", "missing", "incomplete", "unreadable")
        return self.state if self.state in bare else f"{self.state} at epoch {progress}"


def read_master(sweep_dir: Path):
    """The sweep's multirun.yaml: the `hydra` node and the whole config of its command."""
    if not Path(sweep_dir).is_dir():
        raise StudyError(f"{sweep_dir} is not a folder")
    try:
        record = read_record(sweep_dir)
    except ConfigError as err:
        raise StudyError(str(err)) from None
    if record is None:
        raise StudyError(f"{sweep_dir} has no multirun.yaml: not a sweep folder (give the folder Hydra's -m wrote)")
    return record


def sweep_jobs(master) -> list[tuple[str, list[str]]]:
    """(folder name, overrides) of every job, in Hydra's job order: the sweeper's params first, then the
    command line, expanded as BasicSweeper.split_arguments does."""
    params, task = sweeper_params(master.hydra), list(master.hydra.overrides.task)
    [batch] = BasicSweeper.split_arguments(parse([f"{k}={v}" for k, v in params.items()] + task), None)
    varied = varied_keys(params, task)
    return [(job_name(job, varied, num), job) for num, job in enumerate(batch)]


def planned_epochs(master, overrides: list[str]) -> int | None:
    """trainer.epochs of a job that wrote no summary: its own override, else the sweep's."""
    for override in parse(overrides):
        if override.get_key_element().lstrip("+") == "trainer.epochs":
            return int(override.value())
    return OmegaConf.select(master, "trainer.epochs", default=None)


def job_status(name: str, folder: Path, epochs: int | None) -> JobStatus:
    """The job in `folder`: its state, as its summary.json says and tracking.completion checks, and its time."""
    summary = read_summary(folder)
    if not isinstance(summary, dict):
        if not (folder / "summary.json").exists():
            return JobStatus(name, "missing", 0, epochs, None)
        return JobStatus(name, "unreadable", 0, epochs, None, reason=completion(folder))
    try:
        done = int(summary.get("epochs_completed") or 0)
        wall, members = summary.get("wall_time_s"), summary.get("members") or 1
        # a fused member's wall_time_s is its whole group's: its own share is the group's over its members
        per_epoch = wall / members / done if done and wall else None
    except (TypeError, ValueError, ZeroDivisionError):  # a summary edited by hand
        why = "summary.json: epochs_completed, wall_time_s or members is not a number"
        return JobStatus(name, "unreadable", 0, epochs, None, reason=why)
    state, reason = str(summary.get("status", "running")), ""
    if state == "completed":
        reason = completion(folder) or ""
        state, done = ("incomplete", 0) if reason else (state, done)  # a rerun trains it again from scratch
    return JobStatus(name, state, done, summary.get("epochs", epochs), per_epoch, reason=reason)


def fill_estimates(jobs: list[JobStatus]) -> None:
    """A job with no finished epoch gets the mean time per epoch of the sweep's jobs that have one."""
    measured = [j.seconds_per_epoch for j in jobs if j.seconds_per_epoch is not None and not j.estimated]
    if not measured:
        return
    mean = sum(measured) / len(measured)
    for job in jobs:
        if job.seconds_per_epoch is None:
            job.seconds_per_epoch, job.estimated = mean, True


def is_run_folder(folder: Path) -> bool:
    """One run's folder (python -m train ... hydra.run.dir=FOLDER, or a job of a sweep)."""
    return (folder / "summary.json").is_file() or (folder / ".hydra").is_dir()


def study_status(folder: Path) -> list[JobStatus]:
    """Every job of a sweep, or the one run of a run's folder."""
    folder = Path(folder)
    if is_run_folder(folder):
        config = read_config(folder) if (folder / ".hydra" / "config.yaml").is_file() else {}
        return [job_status(folder.name, folder, config.get("trainer.epochs"))]
    master = read_master(folder)
    jobs = [
        job_status(name, folder / name, planned_epochs(master, overrides)) for name, overrides in sweep_jobs(master)
    ]
    fill_estimates(jobs)
    return jobs


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def wrap_name(name: str, width: int) -> str:
    """The job's name in lines of at most `width` characters, broken after a comma between two keys, never
    inside a key=value (a rich table would otherwise fold `seed=1` into `se` and `ed=1`)."""
    lines = [""]
    for piece in [p + "," for p in name.split(",")[:-1]] + [name.split(",")[-1]]:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def status_table(jobs: list[JobStatus], width: int = 80) -> Table:
    """One row per job; an estimated time (the sweep's mean time per epoch) ends in `*`."""
    table = Table(title="jobs of the sweep", title_justify="left")
    for column in ("job", "state", "epochs", "per epoch", "needed"):
        table.add_column(column, no_wrap=True, justify="left" if column in ("job", "state") else "right")
    name_width = max(16, width - 48)  # what the other four columns (at most 35 characters) and the borders leave
    for job in jobs:
        mark = "*" if job.estimated else ""
        epochs = (
            ""
            if job.state == "missing" and job.epochs is None
            else f"{job.epochs_done}/{job.epochs if job.epochs is not None else '?'}"
        )
        table.add_row(
            wrap_name(job.name, name_width),
            job.state,
            epochs,
            duration(job.seconds_per_epoch) + mark,
            duration(job.remaining_s) + (mark if job.state != "completed" else ""),
        )
    return table


def totals(jobs: list[JobStatus]) -> str:
    """The counts per state, and the time the unfinished jobs still need, in a few short lines."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    known = [j.remaining_s for j in jobs if j.remaining_s is not None]
    lines = [
        f"{len(jobs)} jobs: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())),
        f"still needed: {duration(sum(known))}, one job or fused group at a time, as timed where they ran",
    ]
    if len(known) < len(jobs):
        lines.append(f"  and {len(jobs) - len(known)} jobs with no epoch timed in the sweep yet")
    if any(j.estimated and j.state != "completed" for j in jobs):
        lines.append("*: estimated from the mean time per epoch of the sweep's other jobs")
    return "\n".join(lines)


def reasons(jobs: list[JobStatus]) -> list[str]:
    """Why each incomplete or unreadable job is not complete, one line each."""
    return [
        f"{j.name}: {j.state}: {j.reason}"
        + ("; a rerun trains it again from scratch" if j.state == "incomplete" else "")
        for j in jobs
        if j.reason
    ]


def pieces_lines(folder: Path) -> list[str]:
    """The pieces the sweep (pieces.yaml) or the run (its summary.json) ran in so far: how many, and the last."""
    if is_run_folder(Path(folder)):
        history = (read_summary(Path(folder)) or {}).get("pieces") or []
        if not history:
            return ["pieces: none recorded yet"]
        last = history[-1]
        return [
            f"pieces: {len(history)}, the last: started {str(last.get('started'))[:19].replace('T', ' ')} on "
            f"{last.get('host', '?')}, steps {last.get('start_step')} to {last.get('end_step')}, "
            f"{duration(last.get('wall_time_s'))}"
        ]
    try:
        history = pieces.read_pieces(folder)
    except ConfigError as err:
        return [f"pieces: {err}"]
    if not history:
        return ["pieces: none recorded (a sweep run before pieces.yaml was kept)"]
    return [f"pieces: {len(history)}, the last: {pieces.describe(history[-1])}"]


def arm_of(job_name: str) -> str:
    """The job's arm: its folder name without the seed (`pattern=p1,seed=0` -> `pattern=p1`)."""
    return ",".join(p for p in job_name.split(",") if not p.startswith(f"{REPLICATE_KEY}=")) or "all jobs"


def code_lines(folder: Path) -> list[str]:
    """Which code trained the sweep's (or the run's) pieces (resattn.provenance): one line when one code trained
    them all, else each code with its count of pieces, and one line per arm whose pieces mix codes."""
    folder = Path(folder)
    runs = (
        {folder.name: folder}
        if is_run_folder(folder)
        else {d.relative_to(folder).as_posix(): d for d in find_run_dirs([folder]) if (d / "summary.json").is_file()}
    )
    codes_by_arm: dict[str, list[str]] = {}
    for name, run_dir in sorted(runs.items()):
        summary = read_summary(run_dir)
        history = (summary.get("pieces") or [summary]) if isinstance(summary, dict) else []
        codes_by_arm.setdefault(arm_of(name), []).extend(str(p.get("code", "unrecorded")) for p in history)
    counts: dict[str, int] = {}
    for code in (c for codes in codes_by_arm.values() for c in codes):
        counts[code] = counts.get(code, 0) + 1
    if not counts:
        return []
    if len(counts) == 1:
        return [f"code: {next(iter(counts))} (every piece)"]
    return [
        f"code: {len(counts)} versions: " + ", ".join(f"{c} ({n} piece{'s' * (n != 1)})" for c, n in counts.items()),
        *(
            f"{arm}: mixes code {', '.join(dict.fromkeys(codes))}"
            for arm, codes in codes_by_arm.items()
            if len(set(codes)) > 1
        ),
    ]


# --- export: the study without the checkpoints of completed runs ---


def completed_run(folder: Path) -> bool:
    return (read_summary(folder) or {}).get("status") == "completed"


def leave_out_finished_checkpoints(folder: str, names: list[str]) -> list[str]:
    """shutil.copytree's ignore: a completed run's checkpoint.pt; an unfinished run keeps its own, so the
    export can still be resumed."""
    return [CHECKPOINT] if CHECKPOINT in names and completed_run(Path(folder)) else []


def check_export_target(source: Path, dest: Path) -> None:
    """`source` is a sweep folder or one run's (summary.json or .hydra/ in it); `dest` new or empty."""
    if not is_run_folder(source):
        if source.is_dir() and not (source / "multirun.yaml").exists():
            raise StudyError(
                f"{source} is neither a sweep folder (multirun.yaml) nor a run's (summary.json or "
                ".hydra/): give the folder that -m or the run wrote"
            )
        read_master(source)  # a sweep's: its record must read
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StudyError(f"{dest} already exists and is not an empty folder; give a new folder")
    if dest.resolve().is_relative_to(source.resolve()):
        raise StudyError(f"{dest} is inside {source}; give a folder outside it")


def export(source: Path, dest: Path, images: bool = True) -> tuple[int, int]:
    """Copy a sweep, or one run's folder, to `dest` (events, summaries, .hydra, sweep.yaml, multirun.yaml,
    report files), each file with its times; without `images`, the events lose their image summaries
    (tracking.drop_images: the attention maps show the data set's images). (files copied, checkpoints left out)."""
    check_export_target(Path(source), Path(dest))
    left_out = sum(1 for p in Path(source).rglob(CHECKPOINT) if completed_run(p.parent))
    if Path(dest).is_dir():
        Path(dest).rmdir()  # copytree makes it
    shutil.copytree(source, dest, ignore=leave_out_finished_checkpoints, symlinks=True)
    if not images:
        for events in Path(dest).rglob("events.out.tfevents.*"):
            drop_images(events)
    copied = sum(1 for p in Path(dest).rglob("*") if p.is_file())
    return copied, left_out


# --- rows: a study's runs in the published table (docs/results/runs.csv) ---

# the table's first columns; after them each run's accuracy per corruption (acc_<name>), λ per block
# (final_lambda_<block>, lam_travel_<block>) and times, with the device last
ROW_COLUMNS = (
    "study",
    "run",
    "status",
    "model",
    "depth",
    "attention",
    "pattern",
    "width",
    "epochs",
    "epochs_completed",
    "train_size",
    "seed",
    "lr",
    "schedule",
    "lam_init",
    "lam_lr_scale",
    "best_test_acc",
    "final_test_acc",
    "robust_acc",
)
LAST_COLUMNS = ("wall_time_s", "corruption_eval_s", "precision", "device")


def run_row(study: str, root: Path, run) -> dict:
    """One run's row, from its summary.json and config (data.train_size: null is every image, "all"); the
    precision is the one the run trained in (summary.json), not the setting (auto)."""
    s = run.summary
    row = {
        "study": study,
        "run": str(run.path.relative_to(root)) if run.path != root else run.path.name,
        "status": run.status,
        **{k: s.get(k) for k in ROW_COLUMNS[3:] if k in s},
        "train_size": run.config.get("data.train_size") or "all",
        "schedule": run.config.get("optim.schedule"),
        **{k: s.get(k) for k in LAST_COLUMNS if k in s},
    }
    if s.get("corruption_acc"):
        row.update({f"acc_{name}": acc for name, acc in robustness.summarise(s["corruption_acc"])[0].items()})
    for key in ("final_lambda", "lam_travel"):
        row.update({f"{key}_{block}": value for block, value in (s.get(key) or {}).items()})
    return row


def write_rows(table: Path, study: str, study_dir: Path) -> int:
    """Put every run under `study_dir` in `table` as the rows of `study`, replacing that study's rows and
    keeping the others; columns appear as runs need them. The number of rows written."""
    if not Path(study_dir).is_dir():
        raise StudyError(f"{study_dir} is not a folder")
    if Path(table).is_dir():
        raise StudyError(f"{table} is a folder: give the CSV file the rows go in (docs/results/runs.csv)")
    runs = [read_run(path) for path in find_run_dirs([study_dir])]
    if not runs:
        raise StudyError(f"{study_dir}: no run folders (summary.json or .hydra/) under it")
    kept = []
    if table.exists():
        with open(table, newline="") as f:
            kept = [row for row in csv.DictReader(f) if row["study"] != study]
    rows = kept + [run_row(study, Path(study_dir), run) for run in runs]
    seen = list(dict.fromkeys(k for row in rows for k in row))
    middle = [k for k in seen if k not in ROW_COLUMNS and k not in LAST_COLUMNS]
    headers = [*ROW_COLUMNS, *middle, *LAST_COLUMNS]
    write_csv(table, headers, [[row.get(k) for k in headers] for row in rows])
    return len(runs)

"""A study in pieces: rerunning a sweep finishes it (the resattn sweeper), and scripts/study.py's status
and export.

One real two-job sweep of tiny synthetic runs is made once for the module; tests work on copies of it.
Subprocesses: that sweep, its rerun (all skipped, no training) and one rerun that trains two jobs.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from rich.console import Console

from conftest import ROOT, TINY, run_train
from resattn.study import JobStatus, StudyError, export, status_table, study_status, totals, wrap_name

SWEEP = [*TINY, "trainer.epochs=1", "trainer.device=cpu", "seed=0,1"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("study") / "sweep"
    done = run_train("-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


def copy_of(sweep_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(sweep_dir, dest, symlinks=True))  # copy2: contents and mtimes


def job_files(sweep_dir: Path, job: str) -> dict[str, tuple[bytes, int]]:
    """Every file of a job's folder: its bytes and its modification time."""
    return {str(p.relative_to(sweep_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted((sweep_dir / job).rglob("*")) if p.is_file()}


def set_summary(job_dir: Path, **changes) -> None:
    summary = json.loads((job_dir / "summary.json").read_text())
    (job_dir / "summary.json").write_text(json.dumps({**summary, **changes}))


def widen_sweep(sweep_dir: Path, seeds: str) -> None:
    """multirun.yaml as a sweep over `seed=<seeds>` had written it: jobs it names have no folder yet."""
    record = OmegaConf.load(sweep_dir / "multirun.yaml")
    record.hydra.overrides.task = [o if not o.startswith("seed=") else f"seed={seeds}"
                                   for o in record.hydra.overrides.task]
    OmegaConf.save(record, sweep_dir / "multirun.yaml")


# --- rerun = finish ---

def test_a_finished_sweep_run_again_leaves_its_jobs_untouched(finished_sweep, tmp_path):
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    before = {job: job_files(sweep_dir, job) for job in ("seed=0", "seed=1")}
    rerun = run_train("-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "#0 seed=0: skipped: completed" in rerun.stdout
    assert "#1 seed=1: skipped: completed" in rerun.stdout
    assert "[resattn.engine]" not in rerun.stdout + rerun.stderr  # no job started, so no data was loaded
    assert {job: job_files(sweep_dir, job) for job in before} == before


def test_a_rerun_resumes_the_interrupted_job_and_runs_the_missing_one(finished_sweep, tmp_path):
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    # seed=1 as a run stopped after its epoch: its checkpoint is there, its summary says interrupted
    set_summary(sweep_dir / "seed=1", status="interrupted", epochs_completed=1)
    untouched = job_files(sweep_dir, "seed=0")
    rerun = run_train("-m", *SWEEP[:-1], "seed=0,1,2", f"hydra.sweep.dir={sweep_dir}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "#0 seed=0: skipped: completed" in rerun.stdout
    assert "#1 seed=1: resuming from epoch 1" in rerun.stdout
    assert "#2 seed=2: new" in rerun.stdout
    assert job_files(sweep_dir, "seed=0") == untouched
    assert "resuming from" in (sweep_dir / "seed=1" / "train.log").read_text()
    for job in ("seed=1", "seed=2"):
        assert json.loads((sweep_dir / job / "summary.json").read_text())["status"] == "completed"
    # the new job kept its number: job 2 of the sweep, as in a sweep run in one go
    assert OmegaConf.load(sweep_dir / "seed=2" / ".hydra" / "hydra.yaml").hydra.job.num == 2


# --- study status ---

@pytest.fixture
def study_in_pieces(finished_sweep, tmp_path) -> Path:
    """seed=0 completed, seed=1 interrupted after 1 of 3 epochs, seed=2 never started."""
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    widen_sweep(sweep_dir, "0,1,2")
    set_summary(sweep_dir / "seed=0", epochs=1, epochs_completed=1, wall_time_s=10.0)
    set_summary(sweep_dir / "seed=1", status="interrupted", epochs=3, epochs_completed=1, wall_time_s=30.0)
    return sweep_dir


def test_status_lists_every_job_with_its_state_and_time_still_needed(study_in_pieces):
    jobs = {j.name: j for j in study_status(study_in_pieces)}
    assert list(jobs) == ["seed=0", "seed=1", "seed=2"]
    assert [jobs[n].describe() for n in jobs] == ["completed", "interrupted at epoch 1/3", "missing"]
    assert jobs["seed=0"].remaining_s == 0
    assert jobs["seed=1"].remaining_s == pytest.approx(2 * 30.0)  # its own 30 s an epoch, 2 epochs left
    # seed=2 has no epoch of its own: the sweep's mean (10 and 30 s), for the 1 epoch the sweep sets
    assert jobs["seed=2"].estimated and jobs["seed=2"].remaining_s == pytest.approx(20.0)
    line = totals(list(jobs.values()))
    assert "3 jobs: 1 completed, 1 interrupted, 1 missing" in line and "1m 20s" in line and "estimated" in line


def test_status_prints_names_whole_at_80_columns(study_in_pieces):
    done = subprocess.run([sys.executable, "scripts/study.py", "status", str(study_in_pieces)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    rows = {line.split()[1]: line.split()[3:-1] for line in done.stdout.splitlines() if "seed=" in line}
    assert rows == {"seed=0": ["completed", "│", "1/1", "│", "10s", "│", "0s"],
                    "seed=1": ["interrupted", "│", "1/3", "│", "30s", "│", "1m", "00s"],
                    "seed=2": ["missing", "│", "0/1", "│", "20s*", "│", "20s*"]}
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


def test_long_names_break_between_keys_only():
    name = "pattern.lam_init=0.01,pattern.lam_learnable=false,seed=0"
    assert wrap_name(name, 30) == "pattern.lam_init=0.01,\npattern.lam_learnable=false,\nseed=0"
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(status_table([JobStatus(name, "interrupted", 12, 30, 240.0, estimated=True)], 80))
    text = console.export_text()
    assert "pattern.lam_learnable=false" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("args, message", [
    (["status", "no/such/folder"], "is not a folder"),
    (["status", "."], "no multirun.yaml"),
])
def test_bad_inputs_name_the_problem_and_exit_2(args, message):
    done = subprocess.run([sys.executable, "scripts/study.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and message in done.stderr


# --- export ---

def test_export_leaves_out_checkpoints_of_completed_runs_only_and_report_reads_it(study_in_pieces, tmp_path):
    dest = tmp_path / "export"
    copied, left_out = export(study_in_pieces, dest)
    assert left_out == 1
    assert not (dest / "seed=0" / "checkpoint.pt").exists()
    assert (dest / "seed=1" / "checkpoint.pt").exists()  # interrupted: kept, so the export can be resumed
    for kept in ("multirun.yaml", "sweep.yaml", "report.md", "seed=0/summary.json", "seed=0/.hydra/overrides.yaml"):
        assert (dest / kept).is_file(), kept
    assert list((dest / "seed=0").glob("events.out.tfevents.*"))
    with pytest.raises(StudyError, match="already exists"):
        export(study_in_pieces, dest)
    report = subprocess.run([sys.executable, "scripts/report.py", str(dest), "--out", str(tmp_path / "report")],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "seed=0" in (tmp_path / "report" / "runs.csv").read_text()


# --- the sweeper's launches: which jobs reach the launcher, under which numbers (no training) ---

class RecordingLauncher:
    def __init__(self):
        self.launches = []

    def launch(self, job_overrides, initial_job_idx):
        self.launches.append(([list(o) for o in job_overrides], initial_job_idx))
        return [f"ran {o[0]}" for o in job_overrides]


class FolderPerOverride:
    """A config loader whose job folder is its override (`seed=1`), or `job<num>` when `by_number`."""

    def __init__(self, sweep_dir: Path, by_number: bool):
        self.sweep_dir, self.by_number = sweep_dir, by_number

    def load_sweep_config(self, master, overrides):
        subdir = "job${hydra.job.num}" if self.by_number else overrides[0]
        return OmegaConf.create({"hydra": {"sweep": {"dir": str(self.sweep_dir), "subdir": subdir}, "job": {"num": 0}},
                                 "trainer": {"resume": "auto"}})


@pytest.mark.parametrize("by_number, launches", [
    (False, [([["seed=1"], ["seed=3"]], 1)]),  # one launch: a parallel launcher runs both at once
    (True, [([["seed=1"]], 1), ([["seed=3"]], 3)]),  # each job keeps its number, so its folder
])
def test_only_unfinished_jobs_reach_the_launcher(tmp_path, by_number, launches):
    from hydra_plugins.resattn_sweeper.resattn_sweeper import FinishingLauncher

    batch = [[f"seed={i}"] for i in range(4)]
    for i in (0, 2):  # completed
        folder = tmp_path / (f"job{i}" if by_number else f"seed={i}")
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"status": "completed", "epochs_completed": 1}))
    inner = RecordingLauncher()
    master = OmegaConf.create({"hydra": {"hydra_logging": None, "verbose": False}})
    results = FinishingLauncher(inner, FolderPerOverride(tmp_path, by_number), master).launch(batch, 0)
    assert inner.launches == launches
    assert results[1] == "ran seed=1" and results[3] == "ran seed=3"
    assert results[0].return_value == {"status": "completed", "epochs_completed": 1}  # as the job itself returns

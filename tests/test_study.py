"""A study in pieces: rerunning a sweep finishes it (the resattn sweeper), and scripts/study.py's status
and export.

One real two-job sweep of tiny synthetic runs is made once for the module; tests work on copies of it.
Subprocesses: that sweep; reruns that train nothing (all skipped, narrowed, refused, or past the deadline);
three reruns that train one or two jobs; and, in the slow run, a sweep stopped by its deadline and finished.
The sweeper's launches and the pieces' endings are tested in-process with launchers that only record.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra._internal.core_plugins import basic_launcher
from omegaconf import OmegaConf
from rich.console import Console
from torch.utils.tensorboard import SummaryWriter

from conftest import ROOT, TINY, run_train

# the sweeper's classes are looked up when a test runs: Hydra's plugin scan re-executes its plugin modules (and
# its own launchers) in place, so a class imported at collection may no longer be the one the module holds
from hydra_plugins.resattn_sweeper import resattn_sweeper
from resattn.errors import ConfigError
from resattn.pieces import read_pieces
from resattn.rerun import PlannedJob
from resattn.study import (
    JobStatus,
    StudyError,
    export,
    pieces_lines,
    reasons,
    status_table,
    study_status,
    totals,
    wrap_name,
    write_rows,
)
from resattn.tracking import completion

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
    return {
        str(p.relative_to(sweep_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted((sweep_dir / job).rglob("*"))
        if p.is_file()
    }


def set_summary(job_dir: Path, **changes) -> None:
    summary = json.loads((job_dir / "summary.json").read_text())
    (job_dir / "summary.json").write_text(json.dumps({**summary, **changes}))


def widen_sweep(sweep_dir: Path, seeds: str) -> None:
    """multirun.yaml as a sweep over `seed=<seeds>` had written it: jobs it names have no folder yet."""
    record = OmegaConf.load(sweep_dir / "multirun.yaml")
    record.hydra.overrides.task = [
        o if not o.startswith("seed=") else f"seed={seeds}" for o in record.hydra.overrides.task
    ]
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
    # the command runs every job the records list, and one more: a widened sweep, its records rewritten
    assert OmegaConf.load(sweep_dir / "sweep.yaml").varied.seed == ["0", "1", "2"]
    piece = last_piece(sweep_dir)
    assert (piece["jobs"], piece["records"]) == ({"skipped": 1, "resumed": 1, "new": 1, "rerun": 0}, "rewritten")


def test_a_rerun_that_adds_no_job_keeps_the_records_as_the_sweep_wrote_them(finished_sweep, tmp_path):
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    records = {name: (sweep_dir / name).read_bytes() for name in ("multirun.yaml", "sweep.yaml")}
    rerun = run_train("-m", *SWEEP, "trainer.log_every_n_steps=7", f"hydra.sweep.dir={sweep_dir}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {name: (sweep_dir / name).read_bytes() for name in records} == records  # no job used log_every_n_steps=7
    assert last_piece(sweep_dir)["records"] == "kept"


def test_a_diverged_job_is_a_result_the_rerun_skips(finished_sweep, tmp_path):
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    set_summary(sweep_dir / "seed=1", status="diverged", step=3)
    untouched = job_files(sweep_dir, "seed=1")
    rerun = run_train("-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert "#1 seed=1: skipped: diverged at step 3 (a new hydra.sweep.dir trains it again)" in rerun.stdout
    assert rerun.returncode == 1 and "seed=1 (diverged)" in rerun.stderr  # the sweep still says it did not complete
    assert job_files(sweep_dir, "seed=1") == untouched


@pytest.mark.parametrize("change, advice", [("attention=se", "attention=cbam"), ("model=resnet", "model=simplecnn")])
def test_a_changed_group_is_refused_with_the_group_choice_that_finishes_the_sweep(
    finished_sweep, tmp_path, change, advice
):
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    refused = run_train("-m", *SWEEP, change, f"hydra.sweep.dir={sweep_dir}")
    assert refused.returncode == 2
    assert f"ran with {advice}, this command gives {change}; give {advice} to finish" in refused.stderr
    followed = run_train("-m", *SWEEP, advice, f"hydra.sweep.dir={sweep_dir}")  # the advice, taken literally
    assert followed.returncode == 0 and "skipped: completed" in followed.stdout, followed.stderr[-3000:]


@pytest.mark.parametrize(
    "bad, says",
    [
        ("trainer.epochs=1,0", "trainer.epochs=0: trainer.epochs must be an integer >= 1, got 0; no job started"),
        ("optim.lr=0.1,abc", "optim.lr=abc: optim.lr must be a number, got 'abc'; no job started"),
        ("seed=0..2", "seed=range(0,3)"),
    ],
)
def test_a_sweep_with_one_bad_value_refuses_before_any_job_trains(bad, says, tmp_path):
    sweep_dir = tmp_path / "new" / "sweep"
    refused = run_train("-m", *SWEEP[:-1], bad, f"hydra.sweep.dir={sweep_dir}")
    assert refused.returncode == 2 and says in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists()  # not even the folders made to name its jobs


def last_piece(sweep_dir: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(sweep_dir / "pieces.yaml"))[-1]


def test_the_first_piece_is_recorded(finished_sweep):
    [piece] = OmegaConf.to_container(OmegaConf.load(finished_sweep / "pieces.yaml"))
    assert piece["overrides"] == SWEEP and piece["host"] and piece["started"] <= piece["ended"]
    assert (piece["jobs"], piece["records"], piece["ended_by"]) == (
        {"skipped": 0, "resumed": 0, "new": 2, "rerun": 0},
        "written",
        "finished",
    )


@pytest.mark.parametrize(
    "listed, change, says",
    [
        (
            None,
            ["trainer.epochs=2"],
            "seed=0 ran with trainer.epochs=1, this command gives trainer.epochs=2; give "
            "trainer.epochs=1 to finish the sweep as it ran, or give a new hydra.sweep.dir",
        ),
        (None, ["optim.lr=0.05"], "seed=0 ran with optim.lr=0.2, this command gives optim.lr=0.05; give optim.lr=0.2"),
        # a narrowed rerun keeps the records: it may not add a job they do not list, nor change one they list
        (None, ["seed=1,2"], "seed=2 is not one of the 2 jobs the multirun.yaml of"),
        (
            "0,1,2",
            ["seed=2", "trainer.epochs=2"],
            "seed=2 is listed in the sweep's multirun.yaml with trainer.epochs=1, this command gives trainer.epochs=2",
        ),
    ],
)
def test_a_rerun_that_would_make_the_records_lie_is_refused_before_anything_runs(
    finished_sweep, tmp_path, listed, change, says
):
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    if listed:
        widen_sweep(sweep_dir, listed)
    before = job_files(sweep_dir, ".")
    rerun = run_train("-m", *SWEEP, *change, f"hydra.sweep.dir={sweep_dir}")
    assert rerun.returncode == 2, rerun.stderr[-3000:]
    assert rerun.stderr.strip().splitlines() == [rerun.stderr.strip()] and says in rerun.stderr, rerun.stderr
    assert "[resattn.engine]" not in rerun.stdout + rerun.stderr  # nothing trained
    assert job_files(sweep_dir, ".") == before  # no file of the sweep folder changed, pieces.yaml included


def test_a_narrowed_rerun_skips_the_completed_job_and_keeps_the_records(finished_sweep, tmp_path):
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    records = {
        name: ((sweep_dir / name).read_bytes(), (sweep_dir / name).stat().st_mtime_ns)
        for name in ("multirun.yaml", "sweep.yaml")
    }
    rerun = run_train("-m", *SWEEP[:-1], "seed=0", f"hydra.sweep.dir={sweep_dir}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "#0 seed=0: skipped: completed" in rerun.stdout  # its folder named as the sweep named it
    assert "[resattn.engine]" not in rerun.stdout + rerun.stderr
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["seed=0", "seed=1"]  # no duplicate job
    assert {
        name: ((sweep_dir / name).read_bytes(), (sweep_dir / name).stat().st_mtime_ns) for name in records
    } == records
    piece = last_piece(sweep_dir)
    assert piece["overrides"][-1] == "seed=0" and (piece["jobs"]["skipped"], piece["records"]) == (1, "kept")


def test_a_job_that_claims_completed_without_its_events_is_trained_again(finished_sweep, tmp_path):
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    for events in (sweep_dir / "seed=0").glob("events.out.tfevents.*"):
        events.unlink()
    untouched = job_files(sweep_dir, "seed=1")
    rerun = run_train("-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (
        "#0 seed=0: rerun from scratch: summary.json says completed, but it has no TensorBoard events" in rerun.stdout
    )
    assert completion(sweep_dir / "seed=0") is None  # its events are back, to the last step, with HParams
    assert job_files(sweep_dir, "seed=1") == untouched
    assert last_piece(sweep_dir)["jobs"] == {"skipped": 1, "resumed": 0, "new": 0, "rerun": 1}


def test_completion_checks_the_events_against_the_summary(finished_sweep, tmp_path):
    run_dir = copy_of(finished_sweep / "seed=0", tmp_path / "run")
    assert completion(run_dir) is None
    set_summary(run_dir, step=99)
    assert "its TensorBoard events stop at step 4" in completion(run_dir)
    set_summary(run_dir, step=4, status="interrupted")
    assert completion(run_dir) == "summary.json says interrupted"
    set_summary(run_dir, status="completed")
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()
    with SummaryWriter(str(run_dir)) as writer:  # events to the last step, but no HParams entry
        writer.add_scalar("acc/test", 0.5, 4)
    assert "no HParams entry" in completion(run_dir)
    (run_dir / "summary.json").write_text("{")
    assert completion(run_dir) == "summary.json cannot be read"


def test_past_the_deadline_no_job_starts_and_the_same_command_finishes(finished_sweep, tmp_path):
    sweep_dir = copy_of(finished_sweep, tmp_path / "sweep")
    shutil.rmtree(sweep_dir / "seed=1")
    untouched = job_files(sweep_dir, "seed=0")
    stopped = run_train("-m", *SWEEP, "trainer.deadline=0.001", f"hydra.sweep.dir={sweep_dir}")
    assert stopped.returncode == 124, stopped.stderr[-3000:]  # as timeout(1) exits
    assert "deadline passed: 1 jobs not started; run the same command to continue" in stopped.stdout
    assert not (sweep_dir / "seed=1").exists() and job_files(sweep_dir, "seed=0") == untouched
    assert (last_piece(sweep_dir)["ended_by"], last_piece(sweep_dir)["not_started"]) == ("deadline", 1)
    assert "1 new (1 of them not started)" in pieces_lines(sweep_dir)[0]
    again = run_train("-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert completion(sweep_dir / "seed=1") is None and last_piece(sweep_dir)["ended_by"] == "finished"


@pytest.mark.slow  # waits out a deadline (15 s)
def test_a_job_stopped_at_the_deadline_ends_the_piece_and_the_next_never_starts(tmp_path):
    """The deadline passes while the first job trains (the sweep is paused from its first job's first steps until
    past the deadline): the trainer saves and stops it, the second job never starts, the same command finishes
    both. (A job that would start past the deadline trains nothing: test_engine.)"""
    sweep_dir, deadline, longer = tmp_path / "sweep", 15, [*SWEEP, "data.train_size=2048", "trainer.epochs=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", "-m", *longer, f"trainer.deadline={deadline}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = sweep_dir / "seed=0" / "train.log"
    while not (log.exists() and "training p3_controlled" in log.read_text()) and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep ended before its first job trained"
    os.kill(proc.pid, signal.SIGSTOP)  # 64 steps to go: the deadline passes while they wait
    time.sleep(deadline)
    os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 124, stderr[-3000:]
    s = json.loads((sweep_dir / "seed=0" / "summary.json").read_text())
    assert (s["status"], s["stop_reason"]) == ("interrupted", "deadline")
    assert not (sweep_dir / "seed=1").exists() and last_piece(sweep_dir)["ended_by"] == "deadline"
    again = run_train("-m", *longer, f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "#0 seed=0: resuming from epoch" in again.stdout and "#1 seed=1: new" in again.stdout
    assert completion(sweep_dir / "seed=0") is None and completion(sweep_dir / "seed=1") is None


@pytest.mark.slow  # waits out a deadline (60 s)
def test_a_deadline_under_joblib_saves_every_running_job_and_the_same_command_finishes(tmp_path):
    """Two jobs train side by side in joblib workers when the deadline passes (the workers are paused from their
    first steps until past it): each saves and stops, none is left `running`, the third never trains."""
    sweep_dir, deadline = tmp_path / "sweep", 60
    args = [
        *SWEEP[:-1],
        "seed=0,1,2",
        "data.train_size=2048",
        "trainer.epochs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", "-m", *args, f"trainer.deadline={deadline}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    logs = [sweep_dir / f"seed={seed}" / "train.log" for seed in (0, 1)]
    while not all(log.exists() and "training p3_controlled" in log.read_text() for log in logs) and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep ended before both workers trained"
    os.killpg(proc.pid, signal.SIGSTOP)  # the sweep and its workers: the deadline passes while they wait
    time.sleep(max(0.0, deadline - (time.time() - (sweep_dir / "pieces.yaml").stat().st_ctime)) + 1)
    os.killpg(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 124, stderr[-3000:]
    for seed in (0, 1):
        s = json.loads((sweep_dir / f"seed={seed}" / "summary.json").read_text())
        assert (s["status"], s["stop_reason"]) == ("interrupted", "deadline"), seed
    assert not (sweep_dir / "seed=2" / "summary.json").exists() and last_piece(sweep_dir)["ended_by"] == "deadline"
    again = run_train("-m", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(completion(sweep_dir / f"seed={seed}") is None for seed in (0, 1, 2))


def test_no_launch_starts_once_the_deadline_passed(tmp_path, monkeypatch):
    """A launcher that runs one job after another gets one job per launch: the deadline, passed during the
    first, stops the second from starting; the piece says so, and the sweep exits 124."""
    from resattn import clock

    monkeypatch.setattr(clock, "STARTED", time.time())  # the piece starts now: its deadline is a minute away
    passing = one_after_another(lambda: monkeypatch.setattr(clock, "STARTED", clock.STARTED - 3600))
    sweeper = resattn_sweeper.ResattnSweeper(max_batch_size=None)
    sweeper.config = OmegaConf.create(
        {
            "hydra": {
                "sweep": {"dir": str(tmp_path)},
                "overrides": {"task": ["seed=0,1"]},
                "hydra_logging": None,
                "verbose": False,
            }
        }
    )
    sweeper.finishing = resattn_sweeper.FinishingLauncher(passing, deadline=60)
    with pytest.raises(SystemExit) as stop:
        sweeper.run_piece([planned(tmp_path, seeds=(0, 1), completed=())], keep_numbers=False, records="kept")
    assert stop.value.code == 124
    assert passing.launches == [([["seed=0"]], 0)]
    assert last_piece(tmp_path)["ended_by"] == "deadline"


@pytest.mark.parametrize(
    "stop, ended_by, note",
    [
        (SystemExit(124), "deadline", None),  # a job stopped at the deadline (the trainer exits 124)
        (SystemExit(143), "signal", "SIGTERM"),
        (RuntimeError("no space left\non device"), "error", "RuntimeError: no space left"),
    ],
)
def test_the_piece_says_how_it_ended(tmp_path, stop, ended_by, note):
    def launch():
        raise stop

    sweeper = resattn_sweeper.ResattnSweeper(max_batch_size=None)
    sweeper.config = OmegaConf.create(
        {
            "hydra": {
                "sweep": {"dir": str(tmp_path)},
                "overrides": {"task": ["seed=0"]},
                "hydra_logging": None,
                "verbose": False,
            }
        }
    )
    sweeper.finishing = resattn_sweeper.FinishingLauncher(RecordingLauncher(on_launch=launch))
    with pytest.raises(type(stop)):
        sweeper.run_piece([planned(tmp_path, seeds=(0,), completed=())], keep_numbers=False, records="kept")
    piece = last_piece(tmp_path)
    assert (piece["ended_by"], piece.get("note")) == (ended_by, note) and piece["ended"]


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
    done = subprocess.run(
        [sys.executable, "scripts/study.py", "status", str(study_in_pieces)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[1]: line.split()[3:-1] for line in done.stdout.splitlines() if "seed=" in line}
    assert rows == {
        "seed=0": ["completed", "│", "1/1", "│", "10s", "│", "0s"],
        "seed=1": ["interrupted", "│", "1/3", "│", "30s", "│", "1m", "00s"],
        "seed=2": ["missing", "│", "0/1", "│", "20s*", "│", "20s*"],
    }
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    assert "pieces: 1, the last: " in done.stdout and "2 new; records written; ended by finished" in " ".join(
        done.stdout.split()
    )


def test_status_of_one_runs_folder_is_that_run_and_the_pieces_its_summary_lists(study_in_pieces):
    run = study_in_pieces / "seed=1"  # interrupted after 1 of 3 epochs, 30 s an epoch
    [job] = study_status(run)
    assert (job.name, job.describe(), job.remaining_s) == ("seed=1", "interrupted at epoch 1/3", pytest.approx(60.0))
    summary = json.loads((run / "summary.json").read_text())
    [line] = pieces_lines(run)
    last = summary["pieces"][-1]
    assert (
        line.startswith(f"pieces: {len(summary['pieces'])}, the last: started ")
        and f"steps {last['start_step']} to {last['end_step']}" in line
    )


def test_status_shows_a_corrupt_summary_as_unreadable_and_says_why_a_job_is_not_complete(study_in_pieces):
    for events in (study_in_pieces / "seed=0").glob("events.out.tfevents.*"):
        events.unlink()
    (study_in_pieces / "seed=1" / "summary.json").write_text('{"status": "interr')
    jobs = study_status(study_in_pieces)
    assert [j.describe() for j in jobs] == ["incomplete", "unreadable", "missing"]
    assert jobs[0].remaining_s == pytest.approx(10.0)  # trained again from scratch: its one epoch
    assert reasons(jobs) == [
        "seed=0: incomplete: summary.json says completed, but it has no TensorBoard events; a rerun trains it "
        "again from scratch",
        "seed=1: unreadable: summary.json cannot be read",
    ]


def test_a_history_that_cannot_be_read_is_named_not_overwritten(study_in_pieces):
    (study_in_pieces / "pieces.yaml").write_text("- started: [")
    with pytest.raises(ConfigError, match="pieces.yaml cannot be read .*; repair it or move it away"):
        read_pieces(study_in_pieces)  # the sweeper refuses a rerun with this line (exit 2) before anything runs
    [line] = pieces_lines(study_in_pieces)
    assert line.startswith("pieces: ") and "cannot be read" in line


def test_a_fused_member_counts_its_share_of_its_groups_time(study_in_pieces):
    # seed=1 trained as one of 3 fused members: 30 s an epoch for the whole group, 10 s of it its own
    set_summary(study_in_pieces / "seed=1", members=3)
    jobs = {j.name: j for j in study_status(study_in_pieces)}
    assert jobs["seed=1"].seconds_per_epoch == pytest.approx(10.0)
    assert jobs["seed=1"].remaining_s == pytest.approx(2 * 10.0)  # summed over the group: the group's 2 epochs


def test_long_names_break_between_keys_only():
    name = "pattern.lam_init=0.01,pattern.lam_learnable=false,seed=0"
    assert wrap_name(name, 30) == "pattern.lam_init=0.01,\npattern.lam_learnable=false,\nseed=0"
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(status_table([JobStatus(name, "interrupted", 12, 30, 240.0, estimated=True)], 80))
    text = console.export_text()
    assert "pattern.lam_learnable=false" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize(
    "args, message",
    [
        (["status", "no/such/folder"], "is not a folder"),
        (["status", "."], "no multirun.yaml"),
        (["export", "no/such/folder", "copy"], "is not a folder"),
        (["export", "src", "copy"], "neither a sweep folder"),
    ],
)
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
    report = subprocess.run(
        [sys.executable, "scripts/report.py", str(dest), "--out", str(tmp_path / "report")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert "seed=0" in (tmp_path / "report" / "runs.csv").read_text()


def test_one_runs_folder_exports_like_a_sweep_keeping_its_checkpoint_until_it_completes(study_in_pieces, tmp_path):
    unfinished, completed = study_in_pieces / "seed=1", study_in_pieces / "seed=0"
    assert export(unfinished, tmp_path / "unfinished") == (len(list(_files(unfinished))), 0)
    assert (tmp_path / "unfinished" / "checkpoint.pt").is_file()  # a run in pieces goes on from its export
    copied, left_out = export(completed, tmp_path / "completed")
    assert left_out == 1 and not (tmp_path / "completed" / "checkpoint.pt").exists()
    assert copied == len(list(_files(completed))) - 1 and (tmp_path / "completed" / ".hydra" / "config.yaml").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="neither a sweep folder .multirun.yaml. nor a run's"):
        export(tmp_path / "empty", tmp_path / "nothing")


def _files(folder: Path):
    return (p for p in folder.rglob("*") if p.is_file())


def test_an_export_without_images_keeps_every_scalar_and_drops_the_maps(study_in_pieces, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def tags(run_dir):
        acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        return acc, acc.Tags()

    export(study_in_pieces, tmp_path / "export", images=False)
    (original, before), (copy, after) = tags(study_in_pieces / "seed=0"), tags(tmp_path / "export" / "seed=0")
    assert before["images"] and not after["images"]  # the attention maps drawn over test images are gone
    assert after["scalars"] == before["scalars"]
    for tag in before["scalars"]:
        assert [(e.step, e.value) for e in copy.Scalars(tag)] == [(e.step, e.value) for e in original.Scalars(tag)]
    assert "_hparams_/session_start_info" in copy.summary_metadata  # still a complete run (tracking.completion)


# --- rows: the published table ---


def test_rows_put_a_studys_runs_in_the_table_and_keep_the_other_studies(study_in_pieces, tmp_path):
    table = tmp_path / "runs.csv"
    table.write_text("study,run,status,final_test_acc,device\nolder,a,completed,0.5,cuda\nmine,gone,failed,,cpu\n")
    done = subprocess.run(
        [sys.executable, "scripts/study.py", "rows", str(study_in_pieces), "mine", str(table)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    with open(table, newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["a", "seed=0", "seed=1"]  # the study's old rows replaced, the other study's kept
    assert rows["a"]["final_test_acc"] == "0.5" and rows["a"]["model"] == ""
    for name, status in (("seed=0", "completed"), ("seed=1", "interrupted")):
        summary = json.loads((study_in_pieces / name / "summary.json").read_text())
        config = OmegaConf.load(study_in_pieces / name / ".hydra" / "config.yaml")
        row = rows[name]
        assert (row["status"], row["model"], row["attention"], row["pattern"]) == (
            status,
            config.model.name,
            summary["attention"],
            config.pattern.name,
        )
        assert (
            float(row["final_test_acc"]) == summary["final_test_acc"]
            and row["train_size"] == str(config.data.train_size)
            and float(row["lr"]) == config.optim.lr
            and row["device"] == "cpu"
        )
        assert (row["schedule"], row["precision"]) == (config.optim.schedule, summary["precision"])
    with pytest.raises(StudyError, match="is not a folder"):
        write_rows(table, "mine", tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="no run folders"):
        write_rows(table, "mine", tmp_path / "empty")


# --- the sweeper's launches: which jobs reach the launcher, under which numbers (no training) ---


class RecordingLauncher:
    def __init__(self, on_launch=None):
        self.launches, self.on_launch = [], on_launch

    def launch(self, job_overrides, initial_job_idx):
        self.launches.append(([list(o) for o in job_overrides], initial_job_idx))
        if self.on_launch:
            self.on_launch()
        return [f"ran {o[0]}" for o in job_overrides]


def one_after_another(on_launch=None) -> RecordingLauncher:
    """A launcher that runs its jobs one after another, as Hydra's basic one does (recording, not running)."""

    class OneAfterAnother(basic_launcher.BasicLauncher, RecordingLauncher):
        def __init__(self):
            RecordingLauncher.__init__(self, on_launch)

        launch = RecordingLauncher.launch

    return OneAfterAnother()


def planned(tmp_path: Path, seeds=range(4), completed=(0, 2)) -> list[PlannedJob]:
    summary = {"status": "completed", "epochs_completed": 1}
    return [
        PlannedJob(
            [f"seed={i}"],
            i,
            tmp_path / f"seed={i}",
            summary if i in completed else None,
            "skipped: completed" if i in completed else "new",
        )
        for i in seeds
    ]


@pytest.mark.parametrize(
    "by_number, launches",
    [
        (False, [([["seed=1"], ["seed=3"]], 1)]),  # one launch: a parallel launcher runs both at once
        (True, [([["seed=1"]], 1), ([["seed=3"]], 3)]),  # each job keeps its number, so its folder
    ],
)
def test_only_unfinished_jobs_reach_the_launcher(tmp_path, by_number, launches):
    inner = RecordingLauncher()
    results = resattn_sweeper.FinishingLauncher(inner).launch(planned(tmp_path), keep_numbers=by_number)
    assert inner.launches == launches
    assert results[1] == "ran seed=1" and results[3] == "ran seed=3"
    assert results[0].return_value == {"status": "completed", "epochs_completed": 1}  # as the job itself returns


def test_a_sweep_rerun_on_other_images_is_refused_before_any_job_trains(tmp_path):
    from test_records import BMP_RUN, bmp_folder

    images, sweep_dir = bmp_folder(tmp_path / "images", 10), tmp_path / "sweep"
    folder = [*BMP_RUN, f"data.root={images}"]
    assert run_train("-m", *SWEEP, *folder, f"hydra.sweep.dir={sweep_dir}").returncode == 0
    shutil.rmtree(sweep_dir / "seed=1")  # a job the first piece never reached
    bmp_folder(images, 90)  # other pixels under the same names and sizes
    again = run_train("-m", *SWEEP, *folder, f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 2
    assert (
        again.stderr.strip()
        .splitlines()[-1]
        .startswith("error: rerun refused, no job started: seed=0 trained on other images than data.root=")
    )
    assert not (sweep_dir / "seed=1").exists()  # seed 1 would have trained on the other images

"""hydra/launcher=slurm against a real one-node SLURM cluster (scripts/slurm_local.sh, started once for the module):
a sweep as the basic launcher runs it, a job requeued by SLURM, a job at its time limit, a cancelled job.

Every job is a tiny synthetic run on one CPU; a job that has to be caught mid-training trains longer (LONG) and the
test polls its files. Skipped where the cluster cannot start (not root; slurm-wlm or munge missing: .ci/run
installs them). The jobs run this checkout's code: PYTHONPATH (src/) goes with them, as sbatch passes on the
environment.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import ROOT, TINY, run_train

# one worker runs them all (pyproject.toml: --dist loadgroup): the module's one cluster, on fixed ports
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
# the cluster's one partition, no GPU, one CPU a job (so torch trains on one thread); timeout_min is each test's
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "trainer.device=cpu",
]
# 32 steps an epoch, 2 epochs: 5 to 20 s of training on one core, long enough to be caught mid-training
LONG = [*TINY, "data.train_size=1024", "trainer.batch_size=32"]
ONLY = "job0"  # the folder of a sweep's one job (nothing varies)
SPEED = "throughput/"  # the scalars that measure speed: the only ones two runs of one config may differ in
SWEEPS: list[subprocess.Popen] = []  # every sweep started, killed with the cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    """The variables a sweep needs to reach the cluster (its config, its sacct; this checkout's code); the
    cluster is stopped when the module ends."""
    env = {"RESATTN_SLURM_DIR": str(tmp_path_factory.mktemp("slurm-local"))}
    started = subprocess.run(
        [str(SCRIPT), "start"], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    if started.returncode == 2:  # the script's one-line refusal: it cannot run here (not root, packages missing...)
        pytest.skip(f"no local SLURM cluster: {started.stderr.strip()}")
    assert started.returncode == 0, started.stderr
    env.update(
        SLURM_CONF=f"{env['RESATTN_SLURM_DIR']}/slurm.conf",
        PATH=f"{env['RESATTN_SLURM_DIR']}/bin:{os.environ['PATH']}",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    yield env
    for sweep in SWEEPS:  # a sweep a failed test left waiting would wait for ever once the cluster is gone
        sweep.kill()
    stopped = subprocess.run(
        [str(SCRIPT), "stop"], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert stopped.returncode == 0, stopped.stderr


def wait_for(what: str, check, timeout: float):
    """check()'s first true value, polled twice a second; the test fails naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return {}


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file of the run, as TensorBoard reads them, but keeping what
    TensorBoard would purge (purge_orphaned_data=False), so a step written twice shows twice; speed left out."""
    acc = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.SCALARS: 0}, purge_orphaned_data=False
    )
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if not tag.startswith(SPEED)
    }


def same_training(run_dir: Path, reference: Path) -> None:
    """The run ended as the reference did: status, steps, accuracy, λ, and every scalar at every step, once."""
    got, want = summary(run_dir), summary(reference)
    keys = ("status", "step", "epochs_completed", "final_test_acc", "best_test_acc", "final_lambda")
    assert {k: got.get(k) for k in keys} == {k: want[k] for k in keys}
    events = scalars(run_dir)
    for tag, points in events.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: steps written more than once or out of order: {steps}"
    assert events == scalars(reference)


def slurm_sweep(tmp: Path, cluster: dict, *args: str) -> subprocess.Popen:
    """`python -m train -m <SLURM> ARGS` started in the background; it submits the jobs and waits for them."""
    log = (tmp / "sweep.log").open("a")
    SWEEPS.append(
        subprocess.Popen(
            [sys.executable, "-m", "train", "-m", *SLURM, *args],
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **cluster},
        )
    )
    return SWEEPS[-1]


def ended(sweep: subprocess.Popen, tmp: Path, timeout: float) -> tuple[int, str]:
    """The sweep's exit code and output, once it has ended."""
    try:
        code = sweep.wait(timeout)
    except subprocess.TimeoutExpired:
        sweep.kill()
        pytest.fail(f"the sweep did not end within {timeout:.0f} s: {(tmp / 'sweep.log').read_text()[-3000:]}")
    return code, (tmp / "sweep.log").read_text()


def slurm_job(sweep_dir: Path) -> str:
    """The SLURM id of the sweep's one job: the name of submitit's folder holding the job's pickle (an array's
    task is <array id>_<index>; one job alone is not submitted as an array)."""
    return wait_for(
        "the job submitted",
        lambda: next((p.parent.name for p in sweep_dir.glob(".submitit/*/*_submitted.pkl")), None),
        60,
    )


def training(run_dir: Path, times: int = 1) -> None:
    """Wait until the job trains for the `times`-th time: its train.log's "training ..." line, logged once its
    stop handlers are in place (summary.json is first written at the end of the first epoch)."""
    log = run_dir / "train.log"
    wait_for(
        f"{run_dir.name} training ({times})",
        lambda: log.is_file() and log.read_text().count("[resattn.engine][INFO] - training ") >= times,
        180,
    )


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    """LONG run once, uninterrupted, by the basic launcher on one thread: what a resumed job must end as. It starts
    with the first test that asks for it and trains beside that test's job; the returned function waits for it."""
    out = tmp_path_factory.mktemp("reference") / "long"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train",
            *LONG,
            "seed=0",
            "trainer.num_threads=1",
            "trainer.device=cpu",
            f"hydra.run.dir={out}",
        ],
        cwd=out.parent,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def finished() -> Path:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        return out

    yield finished
    run.kill()


@pytest.fixture(scope="module")
def two_sweeps(cluster, tmp_path_factory) -> Path:
    """The same two-job sweep run by the basic launcher (one thread a job) into basic/ and through SLURM (one CPU a
    job, trainer.num_threads left at auto) into slurm/."""
    tmp = tmp_path_factory.mktemp("two-sweeps")
    sweep = slurm_sweep(
        tmp, cluster, *TINY, "seed=0,1", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp / 'slurm'}"
    )
    basic = run_train(
        "-m",
        *TINY,
        "seed=0,1",
        "trainer.num_threads=1",
        "trainer.device=cpu",
        f"hydra.sweep.dir={tmp / 'basic'}",
        cwd=tmp,
    )  # while SLURM runs the other sweep
    assert basic.returncode == 0, basic.stderr[-3000:]
    code, out = ended(sweep, tmp, 300)
    assert code == 0, out[-3000:]
    return tmp


def test_a_sweep_through_slurm_ends_as_with_the_basic_launcher(two_sweeps):
    """Same job folders, same metrics and scalars at every step; the sweep's report written; run by SLURM."""
    jobs = sorted(d.name for d in (two_sweeps / "slurm").iterdir() if (d / ".hydra").is_dir())
    assert jobs == ["seed=0", "seed=1"]
    assert jobs == sorted(d.name for d in (two_sweeps / "basic").iterdir() if (d / ".hydra").is_dir())
    for job in jobs:
        same_training(two_sweeps / "slurm" / job, two_sweeps / "basic" / job)
    assert (two_sweeps / "slurm" / "report.md").is_file()
    assert len(list((two_sweeps / "slurm" / ".submitit").glob("*_[01]/*_result.pkl"))) == 2, "not run by SLURM"


def test_a_slurm_job_trains_on_its_cpus_per_task_threads(two_sweeps):
    """cpus_per_task=1 gives trainer.num_threads=auto one thread (torch's default is every core)."""
    for job in ("seed=0", "seed=1"):
        assert summary(two_sweeps / "slurm" / job)["num_threads"] == 1, job


def test_a_job_requeued_by_slurm_resumes_and_ends_as_uninterrupted(cluster, tmp_path, long_reference):
    """`scontrol requeue`, as a preemption that requeues does: SLURM stops the job (SIGTERM), the run saves at its
    step, SLURM starts the job again and it resumes: the same metrics, each TensorBoard step once."""
    sweep_dir = tmp_path / "sweep"
    sweep = slurm_sweep(
        tmp_path, cluster, *LONG, "seed=0", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}"
    )
    job = slurm_job(sweep_dir)
    training(sweep_dir / ONLY)
    subprocess.run(["scontrol", "requeue", job], env={**os.environ, **cluster}, check=True, timeout=30)
    code, out = ended(sweep, tmp_path, 400)
    assert code == 0, out[-3000:]
    pieces = summary(sweep_dir / ONLY)["pieces"]
    assert len(pieces) == 2, f"not stopped and resumed once: {pieces}"
    assert 0 < pieces[0]["end_step"] == pieces[1]["start_step"] < pieces[1]["end_step"]
    same_training(sweep_dir / ONLY, long_reference())


def warn(job: str, cluster: dict) -> None:
    """The signal SLURM sends a job signal_delay_s before its time limit (submitit's --signal=USR2@...)."""
    subprocess.run(["scancel", "--signal=USR2", job], env={**os.environ, **cluster}, check=True, timeout=30)


def test_a_job_at_its_time_limit_is_requeued_then_recorded_interrupted(cluster, tmp_path, long_reference):
    """max_num_timeout=1: at its first time limit submitit requeues the job and it resumes; at the second none is
    left: the run is recorded interrupted (it was recorded failed) and the sweep says so (exit 1); the same command
    (with a longer limit) finishes it as an uninterrupted run ends. The test sends the limit's warning (USR2) itself
    once the job trains, as submitit's own tests do: SLURM sends it at its 30 s checks, up to 30 s early, which may
    come before a tiny run has started training or after it has ended. timeout_min=2 makes submitit count the
    signal as a time-out (not a preemption), and SLURM's own warning comes after the test's."""
    sweep_dir, run_dir = tmp_path / "sweep", tmp_path / "sweep" / ONLY
    args = [*LONG, "seed=0", f"hydra.sweep.dir={sweep_dir}"]
    sweep = slurm_sweep(
        tmp_path,
        cluster,
        *args,
        "hydra.launcher.timeout_min=2",
        "hydra.launcher.signal_delay_s=5",
        "hydra.launcher.max_num_timeout=1",
    )
    job = slurm_job(sweep_dir)
    training(run_dir)
    warn(job, cluster)
    training(run_dir, 2)  # requeued by submitit, started again by SLURM
    warn(job, cluster)
    code, out = ended(sweep, tmp_path, 180)
    run = summary(run_dir)
    assert (run["status"], run.get("stop_reason")) == ("interrupted", "SIGUSR2"), out[-3000:]
    assert code == 1 and f"1 of 1 jobs did not complete: {ONLY} (interrupted)" in out, out[-3000:]
    assert len(run["pieces"]) == 2 and 0 < run["pieces"][0]["end_step"] < run["pieces"][1]["end_step"]
    code, out = ended(slurm_sweep(tmp_path, cluster, *args, "hydra.launcher.timeout_min=10"), tmp_path, 400)
    assert code == 0, out[-3000:]
    assert len(summary(run_dir)["pieces"]) == 3
    same_training(run_dir, long_reference())


def test_a_cancelled_job_is_recorded_interrupted_and_fails_the_sweep(cluster, tmp_path):
    """scancel: SIGTERM, the run saves at its step and is recorded interrupted, not left running; the sweep exits
    non-zero, and study.py status shows the job interrupted."""
    sweep_dir = tmp_path / "sweep"
    sweep = slurm_sweep(
        tmp_path, cluster, *LONG, "seed=0", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}"
    )
    job = slurm_job(sweep_dir)
    training(sweep_dir / ONLY)
    subprocess.run(["scancel", job], env={**os.environ, **cluster}, check=True, timeout=30)
    code, out = ended(sweep, tmp_path, 240)
    assert code != 0, out[-3000:]
    run = summary(sweep_dir / ONLY)
    assert (run["status"], run.get("stop_reason")) == ("interrupted", "SIGTERM")
    status = subprocess.run(
        [sys.executable, "scripts/study.py", "status", str(sweep_dir)],
        cwd=ROOT,
        text=True,
        capture_output=True,
        env={**os.environ, **cluster, "COLUMNS": "200"},
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert any(ONLY in line and "interrupted" in line for line in status.stdout.splitlines()), status.stdout

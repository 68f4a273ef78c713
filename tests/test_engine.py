"""The loop: evaluation, reproducibility, checkpoints, signals, divergence and failing sweep jobs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, TINY, run_train
from resattn import checkpoint, data
from resattn.build import use_compile
from resattn.evaluate import evaluate
from resattn.model import SimpleCNN

# 512 images at batch 64: 8 steps an epoch, 3 epochs
LONGER = [*TINY, "data.train_size=512", "trainer.epochs=3", "trainer.log_every_n_steps=3"]


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def synthetic_cfg(**kw):
    return OmegaConf.create({"num_classes": 10, "subset_seed": 0, **kw})


def test_fast_evaluation_equals_a_per_sample_evaluation():
    torch.manual_seed(0)
    ds = data.synthetic(synthetic_cfg(train_size=64, test_size=50))
    mean, std = data.channel_stats(ds.train.images)
    model = SimpleCNN("p3_controlled", width=0.25).to(memory_format=torch.channels_last)
    model.train()
    for _ in range(3):  # non-trivial BN statistics
        model(torch.randn(16, 3, 32, 32))
    loader = data.Loader(ds.test, 16, mean, std, "cpu")
    (loss,), (acc,) = evaluate(model, loader, bf16=False)
    model.eval()
    correct, total_loss = 0, 0.0
    for image, label in zip(ds.test.images, ds.test.labels):
        x = ((image.float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1))[None]
        out = model(x)
        correct += int(out.argmax(1).item() == label.item())
        total_loss += torch.nn.functional.cross_entropy(out, label[None]).item()
    assert acc == correct / 50
    assert loss == pytest.approx(total_loss / 50, rel=1e-5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    proc = run_train(*LONGER, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    return run_dir


def start_run(run_dir, *extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "train", *LONGER, *extra, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"run ended (rc {proc.wait()}) before printing {text!r}")


def assert_same_as_reference(run_dir, reference):
    a, b = summary(run_dir), summary(reference)
    assert a["status"] == "completed"
    for key in ("best_test_acc", "final_test_acc", "final_lambda", "step", "epochs_completed"):
        assert a[key] == b[key], key
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    ref = EventAccumulator(str(reference))
    ref.Reload()
    for tag in ("acc/test", "loss/train", "lr", "lambda/block1"):
        assert [e.step for e in acc.Scalars(tag)] == [e.step for e in ref.Scalars(tag)], tag  # none twice, none missing
        assert [e.value for e in acc.Scalars(tag)] == [e.value for e in ref.Scalars(tag)], tag


@pytest.mark.parametrize("signum,when", [(signal.SIGTERM, "after the first epoch"), (signal.SIGINT, "mid-epoch")])
def test_interrupted_run_resumes_to_the_uninterrupted_result(signum, when, reference, tmp_path):
    proc = start_run(tmp_path)
    if when == "after the first epoch":
        wait_for(proc, "epoch 1/3")
    else:
        wait_for(proc, "training p3_controlled")
    proc.send_signal(signum)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signum, output
    s = summary(tmp_path)
    assert s["status"] == "interrupted" and s["epoch"] < 3
    assert (tmp_path / "checkpoint.pt").exists()
    again = run_train(*LONGER, f"hydra.run.dir={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout
    assert_same_as_reference(tmp_path, reference)


def test_second_signal_exits_at_once(tmp_path):
    # Full width, big batches: a step takes seconds, so both signals land inside the same step.
    proc = start_run(tmp_path, "model.width=1", "trainer.batch_size=512", "data.train_size=2048")
    wait_for(proc, "training p3_controlled")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)  # stderr goes to stdout
    # behaviour, not time (a wall-time bound flakes on a loaded machine): it left at once, without the
    # graceful stop's checkpoint, message and summary (an epoch-end checkpoint may exist on a slow machine)
    assert proc.returncode == 130
    assert "checkpoint saved" not in out and "interrupted by" not in out
    written = (tmp_path / "summary.json").exists()
    assert not written or summary(tmp_path)["status"] == "running"


def test_divergence_stops_the_run_with_its_status(tmp_path):
    proc = run_train(*TINY, "optim.lr=1e6", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    s = summary(tmp_path)
    assert s["status"] == "diverged" and "non-finite" in s["error"] and s["step"] >= 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: non-finite training loss")


FAILING_GATE = """
from torch import nn


class Gate(nn.Module):
    def __init__(self, channels, fail=False):
        super().__init__()
        if fail:
            raise RuntimeError("this gate does not build")

    def forward(self, v):
        return v
"""


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path):
    """A job that fails as it runs (its module does not build: no config check can see it) is recorded failed and
    the others train; a bad value the checks can see refuses the sweep before any job (tests/test_study.py)."""
    (tmp_path / "failgate.py").write_text(FAILING_GATE)
    sweep = tmp_path / "sweep"
    args = ["attention=custom", "attention._target_=failgate.Gate", "pattern=p1", "+attention.fail=false,true"]
    proc = run_train(
        "-m",
        *TINY,
        "trainer.epochs=1",
        *args,
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    statuses = {job.name: summary(job) for job in sweep.iterdir() if job.is_dir()}
    assert {k: v["status"] for k, v in statuses.items()} == {
        "attention.fail=false,seed=0": "completed",
        "attention.fail=false,seed=1": "completed",
        "attention.fail=true,seed=0": "failed",
        "attention.fail=true,seed=1": "failed",
    }
    assert "this gate does not build" in statuses["attention.fail=true,seed=0"]["error"]
    assert "2 of 4 jobs did not complete" in proc.stderr
    report = (sweep / "report.md").read_text()  # the sweep's report lists the failures
    failed_lines = [line for line in report.splitlines() if "attention.fail=true" in line]
    assert failed_lines and "failed" in failed_lines[0]


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/resattn-exploit-ran"


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    bad = tmp_path / "evil.pt"
    torch.save({"model": Exploit()}, bad)
    proc = run_train(*TINY, f"trainer.resume={bad}", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2
    assert "trainer.resume" in proc.stderr and "not a readable resattn checkpoint" in proc.stderr
    assert not os.path.exists(MARKER)


def test_truncated_or_foreign_checkpoints_are_refused(reference, tmp_path):
    good = reference / "checkpoint.pt"
    config = torch.load(good, weights_only=True)["config"]
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "plain.pt").write_text("hello")
    for path in ("cut.pt", "plain.pt"):
        with pytest.raises(checkpoint.ConfigError, match="trainer.resume: .* not a readable resattn checkpoint"):
            checkpoint.load(tmp_path / path, config)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.ConfigError, match="is not a resattn checkpoint"):
        checkpoint.load(tmp_path / "other.pt", config)
    for key, value in (
        ("pattern", {**config["pattern"], "name": "p1"}),
        ("model", {"width": 0.5}),
        ("trainer", {**config["trainer"], "epochs": 5}),
        ("optim", {**config["optim"], "lr": 0.5}),
    ):
        with pytest.raises(checkpoint.ConfigError, match=f"made with {key}.*this run has {key}"):
            checkpoint.load(good, {**config, key: value})
    # where and how fast it runs may change
    assert checkpoint.load(good, {**config, "trainer": {**config["trainer"], "device": "cpu", "compile": True}})
    assert checkpoint.load(good, config)["progress"]["step"] == 24


def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path):
    """Not the exception torch raises ("list index out of range" for a text file such as /etc/passwd)."""
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, what in (
        ("passwd", "not a PyTorch checkpoint file (not a zip archive"),
        ("empty.pt", "the file is empty"),
        (".", "it is a folder"),
    ):
        with pytest.raises(checkpoint.ConfigError) as err:
            checkpoint.load(tmp_path / name, {})
        assert what in str(err.value) and "index" not in str(err.value)


@pytest.mark.slow  # a long end-to-end run: in CI's second command (-m slow)
def test_resume_false_starts_fresh_and_a_refused_relaunch_keeps_the_result(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    # a relaunch with a value that does not fit the checkpoint is refused, and the completed summary stays
    proc = run_train(*LONGER, "trainer.epochs=4", f"hydra.run.dir={run}")
    assert proc.returncode == 2 and "trainer.epochs" in proc.stderr
    assert summary(run) == summary(reference)
    proc = run_train(*LONGER, "trainer.resume=false", "trainer.epochs=1", f"hydra.run.dir={run}")
    assert proc.returncode == 0 and "resuming" not in proc.stdout
    assert summary(run)["epochs_completed"] == 1
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert [e.step for e in acc.Scalars("acc/test")] == [8]  # the old run's events are purged, not doubled
    assert len(acc.Scalars("summary/best_test_acc")) == 1


def test_compile_by_default_on_cuda_and_for_long_cpu_runs_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_compile("auto", cuda, 10) and not use_compile("auto", cpu, 499)
    assert use_compile("auto", cpu, 500) == (shutil.which("g++") is not None)
    assert use_compile(True, cpu, 1) and not use_compile(False, cuda, 10**6)


@pytest.mark.slow
def test_compiled_training_runs_on_cpu(tmp_path):
    proc = run_train(*TINY, "trainer.compile=true", f"hydra.run.dir={tmp_path}", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "compiled" in proc.stdout
    s = summary(tmp_path)
    assert s["status"] == "completed" and s["best_test_acc"] > 0.2  # synthetic classes: chance is 0.1


def test_every_compiled_run_of_a_multirun_is_compiled(tmp_path):
    """The jobs of a multirun share one process: without a fresh compile cache per run, dynamo stops
    compiling once one function has been compiled recompile_limit times, and later jobs run eager."""
    import logging

    import torch._dynamo
    from hydra import compose, initialize_config_dir

    from resattn.engine import train

    hits = []

    class Collect(logging.Handler):
        def emit(self, record):
            hits.append(record.getMessage())

    handler = Collect()
    logging.getLogger("torch._dynamo").addHandler(handler)
    try:
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            cfgs = [
                compose("config", overrides=[*TINY, "trainer.epochs=1", "trainer.compile=true", f"pattern={p}"])
                for p in ("baseline", "p1")
            ]
        with torch._dynamo.config.patch(recompile_limit=2):  # one run compiles twice: training and evaluation
            for i, cfg in enumerate(cfgs):
                train(cfg, tmp_path / str(i))
    finally:
        logging.getLogger("torch._dynamo").removeHandler(handler)
    assert not [h for h in hits if "recompile_limit" in h]


def test_a_run_past_its_deadline_stops_cleanly_and_the_same_command_finishes_it_exactly(
    reference, tmp_path, monkeypatch
):
    from hydra import compose, initialize_config_dir

    from resattn import clock, engine
    from resattn.errors import Interrupted

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[*LONGER, "trainer.deadline=60"])
    monkeypatch.setattr(clock, "STARTED", time.time() - 60)  # the piece began a minute ago: its deadline is here
    with pytest.raises(Interrupted) as stopped:
        engine.train(cfg, tmp_path)
    assert stopped.value.exit_code == 124  # as timeout(1) exits
    s = summary(tmp_path)
    assert (s["status"], s["stop_reason"], s["step"]) == ("interrupted", "deadline", 1)  # at the first step past it
    again = run_train(*LONGER, f"hydra.run.dir={tmp_path}")  # the same command, a new piece
    assert again.returncode == 0, again.stderr
    assert_same_as_reference(tmp_path, reference)


def test_a_job_that_would_start_past_its_deadline_trains_nothing_and_leaves_nothing(tmp_path):
    proc = run_train(*TINY, "trainer.deadline=0.001", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 124 and proc.stderr.count("\n") == 1 and "trainer.deadline passed" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_stop_during_the_last_evaluation_still_completes_the_run_with_its_hparams(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from resattn import engine

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "trainer.epochs=1"])
    stop: list[int] = []
    evaluate = engine.evaluate

    def evaluate_then_signal(*args, **kwargs):  # the signal arrives while the last epoch is evaluated
        stop.append(signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", evaluate_then_signal)
    assert engine.train(cfg, tmp_path, stop)["status"] == "completed"
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.summary_metadata
    assert len(acc.Scalars("summary/final_test_acc")) == 1


def test_each_job_of_one_process_gets_the_threads_it_asks_for(tmp_path):
    from hydra import compose, initialize_config_dir

    from resattn import engine
    from resattn.build import DEFAULT_THREADS

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        one, auto = (
            compose("config", overrides=[*TINY, "trainer.epochs=1", f"trainer.num_threads={n}"]) for n in (1, "auto")
        )
    assert engine.train(one, tmp_path / "one")["num_threads"] == 1
    assert engine.train(auto, tmp_path / "auto")["num_threads"] == DEFAULT_THREADS  # not left at 1
    assert torch.get_num_threads() == DEFAULT_THREADS


def test_a_run_killed_at_an_epoch_boundary_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from resattn import engine, records

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "trainer.epochs=2"])
    finish = records.finish

    def crash_after_the_first_epochs_checkpoint(run, m, members, status, *args, **kwargs):
        if status == "running":  # the checkpoint of epoch 1 is written; then the machine goes away
            raise RuntimeError("killed")
        return finish(run, m, members, status, *args, **kwargs)

    monkeypatch.setattr(records, "finish", crash_after_the_first_epochs_checkpoint)
    with pytest.raises(RuntimeError, match="killed"):
        engine.train(cfg, tmp_path / "killed")
    monkeypatch.setattr(records, "finish", finish)
    resumed = engine.train(cfg, tmp_path / "killed")
    whole = engine.train(cfg, tmp_path / "whole")
    for key in ("status", "step", "final_test_acc", "best_test_acc", "final_lambda"):
        assert resumed[key] == whole[key], key

"""The command line, in real subprocesses, read back with TensorBoard's own reader."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, run_train

EPOCH_TAGS = ["acc/train", "acc/test", "loss/train", "loss/test", "lr", "throughput/train_img_s"]


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def p3c_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("p3c")
    # 256 images at batch 64: 4 steps an epoch, logged every 3 steps, so epoch ends fall between log steps.
    proc = run_train(*TINY, "trainer.log_every_n_steps=3", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_run_writes_a_complete_summary(p3c_run):
    s = json.loads((p3c_run / "summary.json").read_text())
    assert {"pattern", "controlled", "lam_init", "lam_learnable", "seed", "epochs", "best_test_acc",
            "final_test_acc", "final_lambda", "wall_time_s", "status"} <= set(s)
    assert (s["pattern"], s["controlled"], s["lam_init"], s["lam_learnable"], s["seed"], s["epochs"], s["status"]) \
        == ("p3_controlled", True, 0.1, True, 0, 2, "completed")
    assert 0 <= s["final_test_acc"] <= s["best_test_acc"] <= 1
    assert set(s["final_lambda"]) == {"block1", "block2"} and s["wall_time_s"] > 0
    assert (p3c_run / ".hydra" / "config.yaml").exists()


def test_events_hold_every_tag_once_per_epoch(p3c_run):
    acc = events(p3c_run)
    tags = acc.Tags()["scalars"]
    for tag in EPOCH_TAGS:
        assert [e.step for e in acc.Scalars(tag)] == [4, 8], tag
    test_acc = [e.value for e in acc.Scalars("acc/test")]
    assert max(test_acc) == pytest.approx(json.loads((p3c_run / "summary.json").read_text())["best_test_acc"])
    assert {"lambda/block1", "lambda/block2"} <= set(tags)


def test_lambda_trajectory_has_a_point_per_log_step_and_epoch_end(p3c_run):
    acc = events(p3c_run)
    for block in ("block1", "block2"):
        points = acc.Scalars(f"lambda/{block}")
        assert [e.step for e in points] == [0, 3, 4, 6, 8]  # step 0, log steps 3 and 6, epoch ends 4 and 8
        assert points[0].value == pytest.approx(0.1, abs=1e-6)
        final = json.loads((p3c_run / "summary.json").read_text())["final_lambda"][block]
        assert points[-1].value == pytest.approx(final, abs=1e-6)


def test_hparams_are_in_the_run_itself(p3c_run):
    acc = events(p3c_run)
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    assert [p.name for p in p3c_run.iterdir() if p.is_dir()] == [".hydra"]  # no sub-run
    best = acc.Scalars("hparams/best_test_acc")[0].value
    assert best == pytest.approx(json.loads((p3c_run / "summary.json").read_text())["best_test_acc"])


def test_same_command_gives_the_same_metrics(p3c_run, tmp_path):
    proc = run_train(*TINY, "trainer.log_every_n_steps=3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    a, b = (json.loads((d / "summary.json").read_text()) for d in (p3c_run, tmp_path))
    for key in ("best_test_acc", "final_test_acc", "final_lambda", "step"):
        assert a[key] == b[key], key
    losses = [[e.value for e in events(d).Scalars("loss/train")] for d in (p3c_run, tmp_path)]
    assert losses[0] == losses[1]


def test_fixed_lambda_stays_put(tmp_path):
    proc = run_train(*TINY, "trainer.epochs=1", "pattern.lam_init=0.3", "pattern.lam_learnable=false",
                     f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["final_lambda"]["block1"] == pytest.approx(0.3, abs=1e-6) and s["lam_learnable"] is False


def test_multirun_makes_one_readable_folder_per_job(tmp_path):
    proc = run_train("-m", *TINY, "trainer.epochs=1", "pattern.lam_init=0.1,0.5", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    # Named by the job's overrides (Hydra's override_dirname): what varies reads off the name.
    common = "data.test_size=128,data.train_size=256,data=synthetic,model.width=0.25"
    assert jobs == [f"{common},pattern.lam_init={lam},trainer.batch_size=64,trainer.epochs=1,trainer.log_every_n_steps=2"
                    for lam in (0.1, 0.5)]
    for job, lam in zip(jobs, (0.1, 0.5)):
        s = json.loads((tmp_path / job / "summary.json").read_text())
        assert (s["status"], s["lam_init"]) == ("completed", lam)
        assert events(tmp_path / job).Scalars("lambda/block1")[0].value == pytest.approx(lam, abs=1e-6)


def test_baseline_logs_no_lambda(tmp_path):
    proc = run_train(*TINY, "trainer.epochs=1", "pattern=baseline", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert not any(t.startswith("lambda/") for t in events(tmp_path).Tags()["scalars"])
    assert json.loads((tmp_path / "summary.json").read_text())["final_lambda"] == {}


# Values that validate() checks are covered key by key in test_config; here, one of each path to the user.
@pytest.mark.parametrize("args,key", [
    (["pattern=p9"], "pattern"),  # a config-group choice, checked before Hydra starts
    (["pattern.lam_init=abc"], "pattern.lam_init"),  # a config value
    (["trainer.device=cuda"], "trainer.device"),
    (["data=cifar10", "data.download=false", "data.root={tmp}/none"], "data.root"),
    (["data=cifar10", "data.root={tmp}/none"], "data.root"),  # download impossible: offline
    (["data=folder", "data.root={tmp}"], "data.root"),
])
def test_bad_input_fails_with_one_line_naming_the_key(args, key, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    proc = run_train(*TINY, *args, f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    if "data=cifar10" in args and "data.download=false" not in args:
        assert "data=synthetic" in lines[0] and "downloaded" in lines[0]


def test_attention_maps_and_custom_scalars_layout_are_logged(p3c_run):
    acc = EventAccumulator(str(p3c_run), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    for block in ("block1", "block2"):
        for kind in ("spatial_mask", "gated_input"):
            assert [e.step for e in acc.Images(f"attention/{block}/{kind}")] == [4, 8]  # first and last epoch
        hist = acc.Histograms(f"attention/{block}/channel_mask")
        assert len(hist) == 2 and 0 <= hist[0].histogram_value.min <= hist[0].histogram_value.max <= 1
    assert acc.Images("attention/input")[0].width > 32
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    from tensorboard.plugins.custom_scalar import layout_pb2
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts == {"test accuracy": ["acc/test"], "lambda block1": ["lambda/block1"],
                      "lambda block2": ["lambda/block2"]}

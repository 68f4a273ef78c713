"""The command line, in real subprocesses, read back with TensorBoard's own reader."""

import io
import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from test_data import make_folder

from conftest import TINY, run_train

EPOCH_TAGS = ["acc/train", "acc/test", "loss/train", "loss/test", "lr", "throughput/train_img_s"]


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def p3c_proc(tmp_path_factory):
    # a folder path longer than a log's 80 columns: the end-of-run panel must not break it
    run_dir = tmp_path_factory.mktemp("p3c") / "a_run_folder_whose_name_alone_is_wider_than_the_end_of_run_table"
    # 256 images at batch 64: 4 steps an epoch, logged every 3 steps, so epoch ends fall between log steps.
    # The progress bar is asked for, as by default: the captured stderr is not a terminal.
    proc = run_train(*TINY, "trainer.log_every_n_steps=3", "tracking.progress=true", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    return proc, run_dir


@pytest.fixture(scope="module")
def p3c_run(p3c_proc):
    return p3c_proc[1]


def test_no_progress_bar_frames_without_a_terminal(p3c_proc):
    stderr = p3c_proc[0].stderr
    assert "━" not in stderr and "epoch 1/2" not in stderr and "epoch 2/2" not in stderr, stderr


def test_the_end_of_run_panel_says_what_the_run_was(p3c_proc):
    from resattn.tracking import model_rows, pattern_cell

    out = p3c_proc[0].stderr  # the panel goes where the progress bar goes
    assert "simplecnn, width 0.25" in out and "│ cbam" in out and "p3_controlled (controlled, lam_init=0.1" in out
    resnet = {"model": "resnet", "depth": 56, "width": 0.5, "attention": "se", "placement": "pre"}
    assert model_rows(resnet) == {"model": "resnet-56, width 0.5", "attention": "se"}
    baseline = {
        "pattern": "baseline",
        "controlled": False,
        "placement": "none",
        "attention": "cbam",
        "model": "simplecnn",
        "width": 1.0,
        "lam_init": 0.3,
        "lam_learnable": True,
    }
    assert model_rows(baseline)["attention"] == "none (baseline)"
    assert pattern_cell(baseline) == "baseline (no λ gate)"  # not lam_init=0.3: there is no λ


def test_the_end_of_run_panel_names_the_folder_on_one_unbroken_line(p3c_proc):
    proc, run_dir = p3c_proc
    assert f"resattn run: {run_dir}" in proc.stderr.splitlines(), proc.stderr  # not wrapped mid-word (issue 27)


def test_run_writes_a_complete_summary(p3c_run):
    s = json.loads((p3c_run / "summary.json").read_text())
    assert {
        "pattern",
        "controlled",
        "lam_init",
        "lam_learnable",
        "seed",
        "epochs",
        "best_test_acc",
        "final_test_acc",
        "final_lambda",
        "wall_time_s",
        "status",
    } <= set(s)
    assert (s["pattern"], s["controlled"], s["lam_init"], s["lam_learnable"], s["seed"], s["epochs"], s["status"]) == (
        "p3_controlled",
        True,
        0.1,
        True,
        0,
        2,
        "completed",
    )
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


def test_the_logged_lr_is_the_rate_of_each_epochs_last_step(p3c_run):
    """OneCycle over 8 steps: the last step's rate is the schedule at step 7, not past its end (it was negative)."""
    import torch

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    cfg = OmegaConf.load(p3c_run / ".hydra" / "config.yaml").optim
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=8, pct_start=cfg.warmup_frac, anneal_strategy="linear", cycle_momentum=False
    )
    rates = []
    for _ in range(8):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert [e.value for e in events(p3c_run).Scalars("lr")] == pytest.approx([rates[3], rates[7]])
    assert min(rates) > 0


def test_lambda_trajectory_has_a_point_per_log_step_and_epoch_end(p3c_run):
    acc = events(p3c_run)
    for block in ("block1", "block2"):
        points = acc.Scalars(f"lambda/{block}")
        assert [e.step for e in points] == [0, 3, 4, 6, 8]  # step 0, log steps 3 and 6, epoch ends 4 and 8
        assert points[0].value == pytest.approx(0.1, abs=1e-6)
        final = json.loads((p3c_run / "summary.json").read_text())["final_lambda"][block]
        assert points[-1].value == pytest.approx(final, abs=1e-6)


def hparams(run_dir):
    """(experiment, session start) of a run's HParams entry, as TensorBoard's hparams plugin reads them."""
    content = events(run_dir).PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    return (
        hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG]),
        hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG]),
    )


def test_hparams_are_in_the_run_itself_with_readable_values(p3c_run):
    experiment, start = hparams(p3c_run)
    assert [p.name for p in p3c_run.iterdir() if p.is_dir()] == [".hydra"]  # no sub-run
    values = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
    # integers as text: a number is a float64 in HParams, where seed 0 read 0.0000
    assert {
        k: values[k]
        for k in (
            "pattern.name",
            "pattern.lam_learnable",
            "pattern.controlled",
            "model.width",
            "optim.lr",
            "trainer.epochs",
            "trainer.batch_size",
            "data.name",
            "seed",
        )
    } == {
        "pattern.name": "p3_controlled",
        "pattern.lam_learnable": "true",
        "pattern.controlled": "true",
        "model.width": 0.25,
        "optim.lr": 0.2,
        "trainer.epochs": "2",
        "trainer.batch_size": "64",
        "data.name": "synthetic",
        "seed": "0",
    }
    assert {h.name for h in experiment.hparam_infos} == set(values)
    # a single run varies nothing, but pattern and seed are what every comparison varies: ticked in any logdir
    assert [h.name for h in experiment.hparam_infos if h.differs] == ["pattern.name", "seed"]
    assert start.group_name == f"{p3c_run.name} ({p3c_run.parent.name})"
    s = json.loads((p3c_run / "summary.json").read_text())
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert metrics == ["summary/best_test_acc", "summary/final_test_acc"]
    assert events(p3c_run).Scalars("summary/best_test_acc")[0].value == pytest.approx(s["best_test_acc"])


def test_same_command_gives_the_same_metrics(p3c_run, tmp_path):
    proc = run_train(*TINY, "trainer.log_every_n_steps=3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    a, b = (json.loads((d / "summary.json").read_text()) for d in (p3c_run, tmp_path))
    for key in ("best_test_acc", "final_test_acc", "final_lambda", "step"):
        assert a[key] == b[key], key
    losses = [[e.value for e in events(d).Scalars("loss/train")] for d in (p3c_run, tmp_path)]
    assert losses[0] == losses[1]


def test_fixed_lambda_stays_put(tmp_path):
    proc = run_train(
        *TINY, "trainer.epochs=1", "pattern.lam_init=0.3", "pattern.lam_learnable=false", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["final_lambda"]["block1"] == pytest.approx(0.3, abs=1e-6) and s["lam_learnable"] is False


def test_multirun_names_jobs_by_what_varies(tmp_path):
    proc = run_train("-m", *TINY, "trainer.epochs=1", "pattern.lam_init=0.1,0.5", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert jobs == ["pattern.lam_init=0.1", "pattern.lam_init=0.5"]
    record = OmegaConf.load(tmp_path / "sweep.yaml")  # the fixed overrides, once
    assert set(record.fixed) == set(TINY) - {"trainer.epochs=2"} | {"trainer.epochs=1"}
    assert dict(record.varied) == {"pattern.lam_init": ["0.1", "0.5"]}
    for job in jobs:
        s = json.loads((tmp_path / job / "summary.json").read_text())
        assert (s["status"], job) == ("completed", f"pattern.lam_init={s['lam_init']}")
        assert events(tmp_path / job).Scalars("lambda/block1")[0].value == pytest.approx(s["lam_init"], abs=1e-6)
        # HParams: the varied key is marked as differing (TensorBoard ticks those columns first)
        experiment, start = hparams(tmp_path / job)
        assert [h.name for h in experiment.hparam_infos if h.differs] == ["pattern.lam_init", "pattern.name", "seed"]
        assert start.group_name == f"lam_init={s['lam_init']} ({tmp_path.name})"  # short: TensorBoard cuts names
    # relaunched into the same folder: the same names, so each job finds its own folder (completed: skipped)
    again = run_train("-m", *TINY, "trainer.epochs=1", "pattern.lam_init=0.1,0.5", f"hydra.sweep.dir={tmp_path}")
    assert again.returncode == 0 and sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == jobs
    assert again.stdout.count("skipped: completed") == 2, again.stdout


def test_folder_sweep_names_are_one_short_folder_each(tmp_path):
    """Varied paths hold separators and, here, more bytes than a file name may: escaped, then cut with a hash."""
    roots = [tmp_path / ("d" * 120) / ("e" * 120) / name for name in ("one", "two")]
    for root in roots:
        make_folder(root, {"a": (250, 10, 0), "b": (0, 200, 250)})  # every channel varies: a std > 0
    sweep = tmp_path / "sweep"
    proc = run_train(
        "-m",
        *TINY,
        "trainer.epochs=1",
        "data=folder",
        f"data.root={roots[0]},{roots[1]}",
        "data.train_size=null",
        "data.test_size=null",
        "trainer.batch_size=4",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and all((job / "summary.json").exists() for job in jobs)
    for job in jobs:
        assert len(job.name.encode()) <= 255 and job.name.startswith("data.root=%2F") and "/" not in job.name
    assert jobs[0].name != jobs[1].name and {json.loads((j / "summary.json").read_text())["status"] for j in jobs} == {
        "completed"
    }
    record = OmegaConf.load(sweep / "sweep.yaml")
    assert {"data=folder", "data.train_size=null", "trainer.batch_size=4"} <= set(record.fixed)
    assert list(record.varied) == ["data.root"]


def test_baseline_logs_no_lambda(tmp_path):
    proc = run_train(*TINY, "trainer.epochs=1", "pattern=baseline", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert not any(t.startswith("lambda/") for t in events(tmp_path).Tags()["scalars"])
    assert json.loads((tmp_path / "summary.json").read_text())["final_lambda"] == {}


# Values that validate() checks are covered key by key in test_config; here, one of each path to the user.
@pytest.mark.parametrize(
    "args,key",
    [
        (["pattern=p9"], "pattern"),  # a config-group choice, checked before Hydra starts
        (["pattern.lam_init=abc"], "pattern.lam_init"),  # a config value
        (["trainer.device=cuda"], "trainer.device"),
        (["data=cifar10", "data.download=false", "data.root={tmp}/none"], "data.root"),
        (["data=cifar10", "data.root={tmp}/none"], "data.root"),  # download impossible: offline
        (["data=folder", "data.root={tmp}"], "data.root"),
        (["pattern.laminit=0.2"], "pattern.laminit; did you mean pattern.lam_init?"),  # Hydra: 6 lines, exit 1
        (["+pattern.laminit=0.2"], "pattern.laminit; did you mean pattern.lam_init?"),  # Hydra: trains, ignores it
        (["attention=se,eca"], "a list of values needs -m (multirun)"),  # Hydra: "Ambiguous value", 6 lines, exit 1
        (["seed=0,1"], "a list of values needs -m (multirun)"),
    ],
)
def test_bad_input_fails_with_one_line_naming_the_key(args, key, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    proc = run_train(*TINY, *args, f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()  # no run happened: no run folder
    if "data=cifar10" in args and "data.download=false" not in args:
        assert "data=synthetic" in lines[0] and "downloaded" in lines[0] and "data=folder data.root=" in lines[0]


def test_a_refused_run_leaves_nothing_in_outputs(tmp_path):
    proc = run_train(*TINY, "pattern.lam_init=1.5", cwd=tmp_path)
    assert proc.returncode == 2 and "pattern.lam_init" in proc.stderr
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_a_single_run_is_named_by_what_it_is(tmp_path):
    proc = run_train(*TINY, "trainer.epochs=1", "pattern=p1", "attention=se", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "outputs" / "runs").glob("*/*")
    assert run.name.endswith("_p1_se") and (run / "summary.json").exists()
    _, start = hparams(run)
    assert start.group_name == f"{run.name} ({run.parent.name})"


def test_lambda_keys_without_a_gate_get_one_warning_line(tmp_path):
    proc = run_train(*TINY, "trainer.epochs=1", "pattern=baseline", "pattern.lam_init=0.3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "pattern.lam_init" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "controlled gate" in lines[0], lines


def test_an_offline_cifar10_run_leaves_no_empty_folders(tmp_path, monkeypatch):
    # a proxy that refuses every connection: offline, whatever network this machine has
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    proc = run_train(*TINY, "data=cifar10", cwd=tmp_path)
    assert proc.returncode == 2 and "could not be downloaded" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data/, no outputs/runs/DATE/


def test_attention_maps_and_custom_scalars_layout_are_logged(p3c_run):
    acc = EventAccumulator(str(p3c_run), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    for block in ("block1", "block2"):
        maps = acc.Images(f"maps/{block}/spatial")
        assert [e.step for e in maps] == [4, 8]  # first and last epoch
        image = np.asarray(Image.open(io.BytesIO(maps[0].encoded_image_string)).convert("RGB")).astype(int)
        assert image.shape[1] >= 8 * 32 and np.abs(image[..., 0] - image[..., 1]).max() > 50  # in colour
        hist = acc.Histograms(f"maps/{block}/channel")
        assert len(hist) == 2 and 0 <= hist[0].histogram_value.min <= hist[0].histogram_value.max <= 1
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts == {
        "test accuracy": ["^acc/test$"],
        "corrupted test accuracy (mean)": ["^acc/corrupt/mean$"],
        "lambda block1": ["^lambda/block1$"],
        "lambda block2": ["^lambda/block2$"],
    }


def test_time_series_opens_on_accuracy_and_lambda(p3c_run):
    """TensorBoard's Time Series groups tags by their first part, sorts the groups by name and opens the
    first two: those must be the accuracy and λ curves, not the attention maps."""
    tags = events(p3c_run).Tags()
    groups = sorted({t.split("/")[0] for kind in ("scalars", "images", "histograms") for t in tags[kind]})
    assert groups[:2] == ["acc", "lambda"] and "maps" in groups

"""Attention modules from outside resattn (resattn.external): timm's by type, and a researcher's own by _target_."""

import csv
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_fused import assert_same_run, make
from test_train import hparams
from timm.layers import create_attn, get_attn

from conftest import TINY, run_train
from resattn import engine
from resattn.build import build_model, check_fusable
from resattn.errors import ConfigError
from resattn.external import (
    attention_factory,
    check_contract,
    check_stackable,
    qualifying_timm_types,
    timm_names,
    timm_types,
)
from resattn.keys import check_keys
from resattn.model import SimpleCNN
from resattn.resnet import CifarResNet
from resattn.sweep import job_name, varied_keys
from resattn.tracking import Tracker, gate_effect

TIMM_TYPES = qualifying_timm_types()  # asked of the installed timm when the tests are collected
BACKBONES = {
    "simplecnn": lambda **keys: SimpleCNN(width=0.25, **keys),
    "resnet20": lambda **keys: CifarResNet(depth=20, width=0.25, **keys),
}
# A researcher's module file, outside the project: a gate with masks, one that halves the channels, one that
# cannot take channels-last tensors, one vmap cannot stack (it reads a value back)
GATES = textwrap.dedent("""
    import torch
    from torch import nn


    class SoftGate(nn.Module):
        def __init__(self, channels, k=3):
            super().__init__()
            self.conv = nn.Conv1d(1, 1, k, padding=k // 2)

        def channel_mask(self, v):
            return torch.sigmoid(self.conv(v.mean((2, 3)).unsqueeze(1))).transpose(1, 2).unsqueeze(-1)

        def forward(self, v):
            return self.channel_mask(v) * v

        def masks(self, v):
            return {"channel": self.channel_mask(v)}


    class Shrink(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels // 2, 1)

        def forward(self, v):
            return self.conv(v)


    class Views(nn.Module):
        def __init__(self, channels):
            super().__init__()

        def forward(self, v):
            b, c, h, w = v.shape
            return v.view(b, c * h * w).view(b, c, h, w)  # .view needs a contiguous tensor


    class ReadsBack(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, v):
            return v * self.scale.item()
""")


@pytest.fixture
def one_thread():
    """Tiny models: one thread is many times faster than two on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gates(tmp_path, monkeypatch) -> Path:
    """The module file in a folder of its own, importable (as `python -m train` will find it on PYTHONPATH)."""
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "labgates.py").write_text(GATES)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{Path(__file__).resolve().parents[1] / 'src'}")
    return folder


def test_the_timm_types_are_timms_own_and_each_verdict_holds():
    names = timm_names()
    assert set(TIMM_TYPES) < set(names) == set(timm_types())
    for name in names:
        assert get_attn(name) is not None  # each name is one timm's factory accepts
    with pytest.raises(AssertionError, match="Invalid attn module"):
        get_attn("no_such_attention")
    for name, why in timm_types().items():
        if why is not None:
            assert why.strip() and "\n" not in why
            continue
        v = torch.randn(3, 8, 12, 12)  # a shape the probes did not use
        assert create_attn(name, 8)(v).shape == v.shape, name


@pytest.mark.parametrize("name", TIMM_TYPES)
def test_every_qualifying_timm_type_trains_at_every_placement_and_gate(name, one_thread):
    factory = attention_factory({"name": f"timm.{name}", "type": name})
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    for backbone, make_net in BACKBONES.items():
        for pattern in ("p1", "p2", "p3", "p4"):
            for controlled in (False, True):  # the plain gate A(v)*v, and the λ gate with one λ per channel
                net = make_net(pattern=pattern, attention=factory, controlled=controlled, lam_shape="channel")
                check_contract(net, f"timm.{name}")
                opt = torch.optim.SGD(net.parameters(), lr=0.1)
                F.cross_entropy(net(x), y).backward()
                attn = [p for b in net.blocks.values() for p in b.attn.parameters()]
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in attn), (backbone, pattern)
                opt.step()


def test_a_gate_effect_seen_from_outside_is_the_gate_itself():
    se = create_attn("se", 16)
    v = torch.randn(2, 16, 8, 8).relu()
    mask = torch.sigmoid(se.fc2(se.fc1(v.mean((2, 3), keepdim=True)).relu()))
    effect = gate_effect(v, se(v))
    torch.testing.assert_close(effect["channel"], mask, rtol=1e-4, atol=1e-6)
    assert effect["spatial"].shape == (2, 1, 8, 8)


def test_maps_of_a_module_without_masks_show_its_effect(tmp_path, one_thread):
    net = SimpleCNN("p1", width=0.25, attention=attention_factory({"name": "timm.coord", "type": "coord"}))
    tracker = Tracker(tmp_path, progress=False)
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    tracker.attention_maps(net, images, images.float() / 255, step=1)
    tracker.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert acc.Tags()["images"] == ["maps/block1/effect_spatial", "maps/block2/effect_spatial"]
    assert acc.Tags()["histograms"] == ["maps/block1/effect_channel", "maps/block2/effect_channel"]


def test_constructor_keys_of_timm_and_custom_modules_pass_the_command_line_check():
    assert (
        check_keys(["attention=timm", "attention.type=se", "attention.rd_ratio=0.25"])[-1] == "+attention.rd_ratio=0.25"
    )  # added to the config, with or without +
    assert check_keys(["attention=custom", "attention._target_=a.B", "+attention.k=3"])[-1] == "+attention.k=3"
    with pytest.raises(ConfigError, match="unknown key attention.rd_ratio"):
        check_keys(["attention=se", "attention.rd_ratio=0.25"])


def test_a_module_that_changes_the_shape_is_refused_when_built(gates):
    cfg = make("attention=custom", "attention._target_=labgates.Shrink", "pattern=p1")
    with pytest.raises(
        ConfigError,
        match=r"labgates.Shrink \(Shrink\) must return its input's shape: in block1 it "
        r"returned \(2, 8, 32, 32\) for an input of \(2, 16, 32, 32\)",
    ):
        build_model(cfg, 10)


def test_a_module_that_cannot_take_channels_last_tensors_is_refused_where_training_feeds_them(gates, one_thread):
    with pytest.raises(
        ConfigError, match=r"attention labgates.Views fails in block1 in eval mode: RuntimeError: view size"
    ):
        build_model(make("attention=custom", "attention._target_=labgates.Views", "trainer.channels_last=true"), 10)
    build_model(make("attention=custom", "attention._target_=labgates.Views", "trainer.channels_last=false"), 10)


def test_a_module_vmap_cannot_stack_is_refused_for_fused_members(gates, one_thread, tmp_path):
    from resattn import engine

    cfg = make("attention=custom", "attention._target_=labgates.ReadsBack")
    with pytest.raises(ConfigError, match="hydra/launcher=fused cannot stack attention labgates.ReadsBack"):
        check_fusable(cfg, build_model(cfg, 10))
    other = make("attention=custom", "attention._target_=labgates.ReadsBack", "seed=1")
    with pytest.raises(ConfigError, match="hydra/launcher=fused cannot stack attention labgates.ReadsBack"):
        engine.train_members([cfg, other], [tmp_path / "a", tmp_path / "b"])  # before any step
    check_stackable(build_model(make("attention=timm", "attention.type=coord"), 10), "timm.coord")


@pytest.mark.parametrize("name", ["eca", "coord"])
def test_a_timm_module_trains_fused_exactly_as_alone(name, tmp_path):
    one = ["attention=timm", f"attention.type={name}", "trainer.epochs=1", "trainer.num_threads=1"]
    cfgs = [make("seed=0", *one), make("seed=1", "pattern.lam_init=0.3", *one)]
    assert [s["status"] for s in engine.train_members(cfgs, [tmp_path / "f0", tmp_path / "f1"])] == ["completed"] * 2
    engine.train(cfgs[1], tmp_path / "alone")  # the second member: its own seed and λ start
    assert_same_run(tmp_path / "f1", tmp_path / "alone")


def test_a_researchers_module_from_outside_trains_at_p3_controlled_with_lambda(gates, tmp_path):
    proc = run_train(
        *TINY,
        "pattern=p3_controlled",
        "attention=custom",
        "attention._target_=labgates.SoftGate",
        "+attention.k=5",
        "optim.lam_lr_scale=100",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    [run] = (tmp_path / "outputs" / "runs").glob("*/*")
    assert run.name.endswith("_p3_controlled_labgates.SoftGate")
    s = json.loads((run / "summary.json").read_text())
    assert (s["status"], s["attention"], s["attention_keys"]) == (
        "completed",
        "labgates.SoftGate",
        {"_target_": "labgates.SoftGate", "k": 5},
    )
    assert set(s["final_lambda"]) == {"block1", "block2"} and all(abs(t) > 0 for t in s["lam_travel"].values())
    acc = EventAccumulator(str(run), size_guidance={"histograms": 0})
    acc.Reload()
    assert "maps/block1/channel" in acc.Tags()["histograms"]  # its own masks, not the effect seen from outside
    assert re.search(r"attention\s+\W\s+labgates\.SoftGate", proc.stderr)  # the end-of-run panel's row


@pytest.mark.parametrize(
    "args,message",
    [
        (["attention=custom", "attention._target_=labgates.Shrink"], "must return its input's shape"),
        (["attention=timm", "attention.type=no_such_gate"], "attention.type must be one of timm"),
    ],
)
def test_a_bad_module_is_refused_in_one_line(gates, tmp_path, args, message):
    proc = run_train(*TINY, *args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists()  # nothing left behind


def test_sweep_job_folders_name_the_timm_type_when_it_varies():
    task = ["attention=timm", "attention.type=se,coord", "pattern=p1"]
    assert (
        job_name(["attention=timm", "attention.type=coord", "pattern=p1"], varied_keys(None, task), 0)
        == "attention.type=coord"
    )


@pytest.mark.slow  # four jobs and a report: in CI's second command (-m slow)
def test_a_preset_sweeps_timm_types_and_everything_downstream_names_them(tmp_path):
    proc = run_train(
        "-m",
        "experiment=placement_grid",
        *TINY,
        "trainer.epochs=1",
        "data.train_size=128",
        "attention=timm",
        "attention.type=se,coord",
        "pattern=baseline,p1",
        "seed=0",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("se", "coord"):
        job = tmp_path / f"attention.type={name},pattern=p1"  # the job folders name the varied keys
        assert json.loads((job / "summary.json").read_text())["attention"] == f"timm.{name}"
        _, start = hparams(job)
        assert start.hparams["attention.name"].string_value == f"timm.{name}"
    with open(tmp_path / "comparisons.csv") as f:  # the report's groups, and the grid heatmap drawn from them
        rows = {(r["group"], r["reference"]) for r in csv.DictReader(f) if r["metric"] == "final_test_acc"}
    assert rows == {
        (f"pattern=p1, attention=timm.{n}", f"pattern=baseline, attention=timm.{n}") for n in ("se", "coord")
    }
    assert (tmp_path / "grid_heatmap.png").exists()


def test_a_module_that_fails_only_in_train_mode_is_refused_when_built(gates, tmp_path):
    (gates / "traingates.py").write_text(
        textwrap.dedent("""
        from torch import nn


        class OnlyEval(nn.Module):
            def __init__(self, channels):
                super().__init__()

            def forward(self, v):
                if self.training:
                    raise RuntimeError("no training here")
                return v
        """)
    )
    with pytest.raises(ConfigError, match="attention traingates.OnlyEval fails in block1 in train mode: RuntimeError"):
        build_model(make("attention=custom", "attention._target_=traingates.OnlyEval"), 10)


def test_timm_lambda_under_channels_last_is_refused_with_the_key_that_trains_it():
    lam = ["attention=timm", "attention.type=lambda", "pattern=p1"]
    with pytest.raises(
        ConfigError, match="attention timm.lambda cannot train channels-last .*trainer.channels_last=false"
    ):
        build_model(make(*lam), 10)
    build_model(make(*lam, "trainer.channels_last=false"), 10)

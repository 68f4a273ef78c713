"""The CIFAR ResNets of He et al. 2016 with every placement, attention and gate."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, run_train
from resattn import PATTERNS, CifarResNet
from resattn.attention import SE
from resattn.blocks import ZeroPadSkip


def train_one_step(model: torch.nn.Module, pattern: str, controlled: bool) -> None:
    """A forward and backward pass on a tiny batch: every parameter gets a finite gradient."""
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), (pattern, name)
    has_lambda = controlled and pattern != "baseline"
    assert bool(model.lambdas()) == has_lambda, pattern


@pytest.mark.parametrize("attention", ["cbam", "cbam_channel", "cbam_spatial", "se", "eca"])
def test_every_placement_and_gate_trains_with_each_attention(attention):
    for pattern in PATTERNS:
        for controlled, lam_shape in [(False, "scalar"), (True, "scalar"), (True, "channel")]:
            model = CifarResNet(20, pattern, attention, controlled=controlled, lam_shape=lam_shape, width=0.25)
            train_one_step(model, pattern, controlled)


@pytest.mark.parametrize(
    "depth,shortcut,params",
    [
        (20, "A", 269_722),
        (32, "A", 464_154),
        (44, "A", 658_586),
        (56, "A", 853_018),
        (110, "A", 1_727_962),
        (20, "B", 272_474),  # + two 1x1 conv + BN projections
    ],
)
def test_parameter_counts_are_the_papers(depth, shortcut, params):
    """He et al.: ResNet-20 0.27M, -32 0.46M, -44 0.66M, -56 0.85M, -110 1.7M parameters (option A)."""
    model = CifarResNet(depth, "baseline", shortcut=shortcut)
    assert sum(p.numel() for p in model.parameters()) == params


def test_structure_stages_and_block_names():
    model = CifarResNet(depth=32, pattern="p1", attention="se", num_classes=100)
    names = list(model.blocks)
    assert names == [f"stage{s}.block{i}" for s in (1, 2, 3) for i in range(5)]
    strides = [b.F.conv1.stride[0] for b in model.blocks.values()]
    assert strides == [1] * 5 + [2] + [1] * 4 + [2] + [1] * 4
    assert [b.F.conv2.out_channels for b in model.blocks.values()][::5] == [16, 32, 64]
    assert isinstance(model.blocks["stage2.block0"].skip, ZeroPadSkip)
    assert isinstance(model.blocks["stage2.block0"].attn, SE)
    assert model.stem[0].out_channels == 16 and model.head[2].out_features == 100
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 100)
    assert CifarResNet(20, width=0.5).blocks["stage3.block2"].F.conv2.out_channels == 32


def test_channel_lambdas_follow_the_gated_channels():
    model = CifarResNet(20, "p3_controlled", "eca", lam_shape="channel", lam_init=0.2, width=0.25)
    shapes = {name: tuple(lam.shape) for name, lam in model.lambdas().items()}
    # p3 gates the block's input: stage2.block0 sees stage 1's 4 channels
    assert shapes["stage1.block0"] == (4,) and shapes["stage2.block0"] == (4,) and shapes["stage2.block1"] == (8,)
    assert all(torch.allclose(lam, torch.tensor(0.2)) for lam in model.lambdas().values())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depth": 21}, "depth must be 6n\\+2"),
        ({"shortcut": "C"}, "shortcut"),
        ({"pattern": "p9"}, "pattern"),
        ({"attention": "gc"}, "attention"),
        ({"lam_shape": "vector", "pattern": "p3_controlled"}, "lam_shape"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CifarResNet(**kwargs)


def test_cli_trains_a_resnet_with_se_on_the_shortcut_and_channel_lambdas(tmp_path):
    proc = run_train(
        *TINY,
        "trainer.epochs=1",
        "model=resnet",
        "attention=se",
        "pattern=p4",
        "pattern.controlled=true",
        "pattern.lam_shape=channel",
        "pattern.lam_init=0.2",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert (s["model"], s["depth"], s["attention"], s["lam_shape"], s["status"]) == (
        "resnet",
        20,
        "se",
        "channel",
        "completed",
    )
    blocks = [f"stage{st}.block{i}" for st in (1, 2, 3) for i in range(3)]
    assert list(s["final_lambda"]) == blocks and list(s["final_lambda_channels"]) == blocks
    assert [len(s["final_lambda_channels"][b]) for b in blocks[::3]] == [4, 8, 16]  # width 0.25: 16, 32, 64 / 4
    for b in blocks:
        channels = s["final_lambda_channels"][b]
        assert s["final_lambda"][b] == pytest.approx(sum(channels) / len(channels), rel=1e-5)
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert "lambda/stage3.block2" in tags["scalars"] and "lambda_channels/stage3.block2" in tags["histograms"]
    start = events.Scalars("lambda/stage1.block0")[0]
    assert start.step == 0 and start.value == pytest.approx(0.2, abs=1e-6)
    histogram = events.Histograms("lambda_channels/stage2.block0")[-1].histogram_value
    assert histogram.num == 8 and 0 < histogram.min <= histogram.max < 1

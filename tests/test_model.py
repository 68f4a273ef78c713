import pytest
import torch
from test_resnet import train_one_step
from torch import nn

from resattn import PATTERNS, SimpleCNN


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_every_pattern_builds_and_classifies(pattern):
    m = SimpleCNN(pattern=pattern, num_classes=7, width=0.25)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert m.block1.placement == PATTERNS[pattern][0]
    assert set(m.lambdas()) == ({"block1", "block2"} if pattern == "p3_controlled" else set())


def test_default_width_has_the_notebook_channels():
    m = SimpleCNN()
    assert [m.stem[0].out_channels, m.conv1[0].out_channels, m.block2.F.conv2.out_channels, m.head[2].in_features] == [
        32,
        64,
        128,
        128,
    ]
    assert m.block2.F.conv1.stride == (2, 2)


def test_modules_are_registered_in_forward_order():
    names = [n for n, _ in SimpleCNN().named_children()]
    assert names == ["stem", "conv1", "block1", "block2", "conv2", "head"]
    assert [n for n, _ in SimpleCNN().block1.named_children()][:3] == ["attn", "F", "skip"]


def test_controlled_flag_overrides_the_pattern_gate():
    assert SimpleCNN("p1", controlled=True, width=0.25).block1.controlled
    assert not SimpleCNN("p3_controlled", controlled=False, width=0.25).block1.controlled
    assert not SimpleCNN("baseline", controlled=True, width=0.25).block1.controlled


def test_fixed_lambda_model_has_no_lambda_parameter():
    m = SimpleCNN("p3_controlled", lam_init=0.3, lam_learnable=False, width=0.25)
    assert not any("lam_logit" in n for n, _ in m.named_parameters())
    assert m.lambdas()["block2"].item() == pytest.approx(0.3, abs=1e-6)


def test_unknown_pattern_is_refused():
    with pytest.raises(ValueError, match="pattern must be one of"):
        SimpleCNN("p5")


def test_loads_the_notebooks_state_dict_names():
    torch.manual_seed(0)
    source = SimpleCNN("p3_controlled")
    notebook_sd = {k.replace("block1.", "p3_1.").replace("block2.", "p3_2."): v for k, v in source.state_dict().items()}
    target = SimpleCNN("p3_controlled")
    target.load_state_dict(notebook_sd)  # strict: every key found under its new name
    source.eval(), target.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("attention", ["cbam", "cbam_channel", "cbam_spatial", "se", "eca"])
def test_every_placement_and_gate_trains_with_each_attention(attention):
    for pattern in PATTERNS:
        for controlled, lam_shape in [(False, "scalar"), (True, "scalar"), (True, "channel")]:
            model = SimpleCNN(pattern, attention=attention, controlled=controlled, lam_shape=lam_shape, width=0.125)
            train_one_step(model, pattern, controlled)


def test_attention_takes_a_name_or_a_factory():
    from resattn.attention import ECA, attention_layer

    assert isinstance(SimpleCNN("p1", attention="eca", width=0.25).block1.attn, ECA)
    m = SimpleCNN("p1", attention=attention_layer("se", reduction=2, bias=False), width=0.25)
    assert m.block1.attn.fc1.out_channels == 8 and m.block1.attn.fc1.bias is None


# The seed notebook's network, transcribed from /work/shared/seed (cells 1-4), the reference for exactness.
class NotebookChannelAttention(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.avg, self.max = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x):
        return torch.sigmoid(self.mlp(self.avg(x)) + self.mlp(self.max(x)))


class NotebookSpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=3 if kernel_size == 7 else 1, bias=False)

    def forward(self, x):
        avg_map = torch.mean(x, dim=1, keepdim=True)
        max_map, _ = torch.max(x, dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([avg_map, max_map], dim=1)))


class NotebookCBAM(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.ca, self.sa = NotebookChannelAttention(channels), NotebookSpatialAttention()

    def forward(self, x):
        x = self.ca(x) * x
        return self.sa(x) * x


class NotebookFx(nn.Module):
    def __init__(self, in_ch, out_ch, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1, self.act = nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class NotebookP3(nn.Module):
    """PreResidualAttentionBlock_P3, or with lam_init ControlledPreResidualAttentionBlock_P3."""

    def __init__(self, in_ch, out_ch, stride=1, lam_init=None):
        super().__init__()
        self.attn, self.F = NotebookCBAM(in_ch), NotebookFx(in_ch, out_ch, stride)
        self.skip = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
            if stride != 1 or in_ch != out_ch
            else nn.Identity()
        )
        self.out_act = nn.ReLU(inplace=True)
        self.controlled = lam_init is not None
        if self.controlled:
            lam = min(max(float(lam_init), 1e-4), 1 - 1e-4)
            self.lam_logit = nn.Parameter(torch.log(torch.tensor(lam) / (1 - torch.tensor(lam))))

    def forward(self, x):
        identity = self.skip(x)
        x_att = self.attn(x)
        if self.controlled:
            lam = torch.sigmoid(self.lam_logit)
            x_att = (1.0 - lam) * x + lam * x_att
        return self.out_act(identity + self.F(x_att))


class NotebookSimpleCNN(nn.Module):
    def __init__(self, lam_init=0.1):
        super().__init__()
        cbr = [
            nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
            for i, o in ((3, 32), (32, 64), (128, 128))
        ]
        self.stem, self.conv1 = cbr[0], cbr[1]
        self.p3_1 = NotebookP3(64, 64, 1, lam_init)
        self.p3_2 = NotebookP3(64, 128, 2, lam_init)
        self.conv2 = cbr[2]
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))

    def forward(self, x):
        x = self.p3_2(self.p3_1(self.conv1(self.stem(x))))
        return self.head(self.conv2(x))


@pytest.mark.parametrize("pattern,lam_init", [("p3_controlled", 0.1), ("p3_controlled", 0.37), ("p3", None)])
def test_simplecnn_computes_exactly_what_the_notebook_computes(pattern, lam_init):
    torch.manual_seed(3)
    notebook = NotebookSimpleCNN(lam_init)
    for m in notebook.modules():  # non-trivial BN state
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    ours = SimpleCNN(pattern, lam_init=lam_init or 0.1)
    assert [k for k in ours.state_dict()] == [
        k.replace("p3_1.", "block1.").replace("p3_2.", "block2.") for k in notebook.state_dict()
    ]  # same entries, same order
    ours.load_state_dict(notebook.state_dict())
    x = torch.randn(4, 3, 32, 32)
    for mode in ("eval", "train"):
        getattr(ours, mode)(), getattr(notebook, mode)()
        out, ref = ours(x), notebook(x)
        assert torch.equal(out, ref), mode
        out.square().sum().backward(), ref.square().sum().backward()
        if lam_init:
            assert torch.equal(ours.block1.lam_logit.grad, notebook.p3_1.lam_logit.grad)

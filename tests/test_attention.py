"""Each attention module against its paper's formula, written out here with the module's own weights."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from resattn.attention import ATTENTIONS, CBAM, ECA, SE, CBAMChannel, CBAMSpatial, attention_keys, attention_layer
from resattn.external import OPEN_ATTENTIONS

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "attention"

torch.manual_seed(0)


def randomise_biases(module: torch.nn.Module) -> None:
    """Non-zero biases, so a formula that forgets one fails."""
    for p in module.parameters():
        if p.ndim == 1:
            p.data.normal_(0, 0.5)


@pytest.mark.parametrize("bias", [True, False])
def test_se_matches_formula(bias):
    m = SE(32, reduction=4, bias=bias)
    randomise_biases(m)
    v = torch.randn(3, 32, 5, 5)
    w1, w2 = m.fc1.weight.flatten(1), m.fc2.weight.flatten(1)  # (h, C), (C, h)
    b1, b2 = (m.fc1.bias, m.fc2.bias) if bias else (torch.zeros(8), torch.zeros(32))
    z = v.mean((2, 3))  # squeeze: (B, C)
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)  # excitation
    torch.testing.assert_close(m(v), s[:, :, None, None] * v)
    torch.testing.assert_close(m.masks(v)["channel"], s[:, :, None, None])
    assert set(m.masks(v)) == {"channel"}


def test_se_hidden_width_and_biases():
    assert SE(16, reduction=16).fc1.out_channels == 4  # floor of four, as for CBAM
    assert SE(256, reduction=16).fc1.out_channels == 16
    assert SE(64, bias=False).fc1.bias is None and SE(64).fc2.bias is not None


@pytest.mark.parametrize(
    "channels,gamma,beta,k",
    [
        (4, 2, 1, 3),  # t = int(1.5) = 1 -> at least 3
        (64, 2, 1, 3),  # t = int(3.5) = 3
        (128, 2, 1, 5),  # t = int(4) = 4 -> 5
        (256, 2, 1, 5),  # t = int(4.5) = 4 -> 5
        (512, 2, 1, 5),  # t = int(5) = 5
        (2048, 2, 1, 7),  # t = int(6) = 6 -> 7
        (512, 1, 1, 11),  # t = 10 -> 11
        (64, 0.5, -2, 9),  # t = int(8) = 8 -> 9
    ],
)
def test_eca_kernel_size_is_adaptive_and_odd(channels, gamma, beta, k):
    assert ECA(channels, gamma=gamma, beta=beta).conv.kernel_size == (k,)


def test_eca_matches_formula():
    m = ECA(128)  # k = 5: a wide enough kernel that a wrong padding or direction shows
    v = torch.randn(3, 128, 4, 4)
    w = m.conv.weight.flatten()  # (k,)
    k = len(w)
    y = F.pad(v.mean((2, 3)), (k // 2, k // 2))  # (B, C + k - 1): zeros beyond the first and last channel
    s = torch.sigmoid(sum(w[j] * y[:, j : j + 128] for j in range(k)))  # cross-correlation across channels
    torch.testing.assert_close(m(v), s[:, :, None, None] * v)
    assert set(m.masks(v)) == {"channel"} and m.conv.bias is None


def test_eca_refuses_a_gamma_that_is_not_positive():
    with pytest.raises(ValueError, match="gamma"):
        ECA(64, gamma=0)


def test_cbam_halves_match_their_formulas():
    v = torch.randn(3, 32, 6, 6)
    half = CBAMChannel(32, reduction=4)
    w1, w2 = half.ca.mlp[0].weight.flatten(1), half.ca.mlp[2].weight.flatten(1)

    def mlp(d):
        return torch.relu(d @ w1.T) @ w2.T

    channel = torch.sigmoid(mlp(v.mean((2, 3))) + mlp(v.amax((2, 3))))[:, :, None, None]
    torch.testing.assert_close(half(v), channel * v)
    assert set(half.masks(v)) == {"channel"}

    half = CBAMSpatial(32, spatial_kernel=3)
    desc = torch.stack([v.mean(1), v.amax(1)], 1)
    spatial = torch.sigmoid(F.conv2d(desc, half.sa.conv.weight, padding=1))
    torch.testing.assert_close(half(v), spatial * v)
    torch.testing.assert_close(half.masks(v)["spatial"], spatial)
    assert set(half.masks(v)) == {"spatial"}


def test_every_attention_has_a_config_with_exactly_its_keys():
    configs = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in CONFIGS.glob("*.yaml")}
    assert set(configs) == set(ATTENTIONS) | set(OPEN_ATTENTIONS)  # timm's and custom: resattn.external
    for name, cfg in configs.items():
        if name in OPEN_ATTENTIONS:
            continue
        assert cfg.pop("name") == name
        assert set(cfg) == set(attention_keys(name))
        module = attention_layer(name, **cfg)(16)  # the config's values build the module
        v = torch.randn(2, 16, 4, 4)
        assert module(v).shape == v.shape and set(module.masks(v)) <= {"channel", "spatial"}


def test_attention_layer_refuses_unknown_names_and_keys():
    with pytest.raises(ValueError, match="attention must be one of"):
        attention_layer("gc")
    with pytest.raises(ValueError, match="spatial_kernel"):
        attention_layer("se", spatial_kernel=7)
    assert attention_layer("se", reduction=8)(64).fc1.out_channels == 8


# ---------------------------------------------------------------- against timm's modules of the same name


def test_se_equals_timms_se_at_the_same_hidden_width():
    from timm.layers import create_attn

    ours = SE(64, reduction=16)
    randomise_biases(ours)
    # timm rounds the hidden width C/16 to a multiple of 8 (here 8), resattn takes max(C // 16, 4) (here 4)
    assert create_attn("se", 64).fc1.out_channels == 8 and ours.fc1.out_channels == 4
    theirs = create_attn("se", 64, rd_channels=4)
    theirs.load_state_dict(ours.state_dict())  # the same names: fc1, fc2 (and timm's bn, an Identity)
    v = torch.randn(3, 64, 5, 5)
    torch.testing.assert_close(ours(v), theirs(v))


@pytest.mark.parametrize("channels", [16, 128, 512])  # kernel sizes 3, 5, 5
def test_eca_equals_timms_eca(channels):
    from timm.layers import create_attn

    ours, theirs = ECA(channels), create_attn("eca", channels)
    assert theirs.conv.kernel_size == ours.conv.kernel_size
    theirs.load_state_dict(ours.state_dict())
    v = torch.randn(3, channels, 4, 4)
    torch.testing.assert_close(ours(v), theirs(v))


def test_cbam_differs_from_timms_in_hidden_width_and_a_batchnorm_after_the_spatial_conv():
    """The notebook's CBAM (attention=cbam) against timm's cbam (attention=timm attention.type=cbam): the same
    computation except (1) the channel MLP's hidden width: max(C // 16, 4) here, round(C / 16) in timm; (2) timm
    puts a BatchNorm after the spatial conv (as CBAM's authors' code does), resattn none. With timm's width set to
    ours and its BatchNorm made the identity, the two agree."""
    from timm.layers import create_attn

    assert CBAM(32).ca.mlp[0].out_channels == 4 and create_attn("cbam", 32).channel.fc1.out_channels == 2
    ours, theirs = CBAM(32), create_attn("cbam", 32, rd_channels=4)
    bn = theirs.spatial.conv.bn
    assert isinstance(bn, torch.nn.BatchNorm2d) and not hasattr(ours.sa, "bn")
    theirs.channel.fc1.weight.data.copy_(ours.ca.mlp[0].weight)
    theirs.channel.fc2.weight.data.copy_(ours.ca.mlp[2].weight)
    theirs.spatial.conv.conv.weight.data.copy_(ours.sa.conv.weight)
    v = torch.randn(3, 32, 6, 6)
    assert not torch.allclose(ours(v), theirs(v), atol=1e-3)  # training mode: timm's BN normalises the logits
    bn.eval()
    bn.running_mean.zero_()  # the pass above moved it
    bn.running_var.fill_(1 - bn.eps)  # y = (x - 0) / sqrt(var + eps) * 1 + 0 = x
    torch.testing.assert_close(ours(v), theirs(v))

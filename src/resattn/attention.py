"""Attention modules, each mapping v to A(v) * v, the gated feature map.

    cbam          CBAM (Woo et al., 2018): channel attention, then spatial attention (the seed notebook's)
    cbam_channel  CBAM's channel half alone
    cbam_spatial  CBAM's spatial half alone
    se            squeeze-and-excitation (Hu et al., 2018)
    eca           efficient channel attention (Wang et al., 2020)

Each is built from the channel count and its own keys (`ATTENTIONS[name](channels, **keys)`);
`attention_layer(name, **keys)` gives the `channels -> module` factory a residual block takes.
`module.masks(v)` returns the masks themselves for visualisation: {"channel": (B, C, 1, 1)} and/or
{"spatial": (B, 1, H, W)}, whichever the module has. timm's attention layers and a researcher's own
module are built by resattn.external (attention=timm, attention=custom).

Against timm's modules of the same names (attention=timm attention.type=se|eca|cbam; tests/test_attention.py):
    se    the same computation; the hidden width differs: max(C // reduction, 4) here, C / 16 rounded to a
          multiple of 8 in timm (equal with +attention.rd_channels=max(C // 16, 4), at one C only)
    eca   the same computation and kernel size
    cbam  the notebook's CBAM differs from timm's cbam in two places: (1) the channel MLP's hidden width,
          max(C // reduction, 4) here, round(C / 16) (at least 1) in timm; (2) timm's spatial branch has a
          BatchNorm after its conv (as the CBAM authors' code does), the notebook's has none, so in training
          timm normalises the spatial logits over the batch. Both stay selectable.
"""

import inspect
import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        # One MLP shared by the average- and max-pooled descriptors.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        peak = self.mlp(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + peak)  # (B, C, 1, 1)


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size not in (3, 7):
            raise ValueError(f"spatial_kernel must be 3 or 7, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=1, keepdim=True)
        peak = x.amax(dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([avg, peak], dim=1)))  # (B, 1, H, W)


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7):
        super().__init__()
        self.ca = ChannelAttention(channels, reduction)
        self.sa = SpatialAttention(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ca(x) * x
        return self.sa(x) * x

    def masks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        channel = self.ca(x)
        return {"channel": channel, "spatial": self.sa(channel * x)}  # the spatial mask sees the channel-gated x


class CBAMChannel(nn.Module):
    """CBAM's channel attention alone: sigmoid(MLP(avgpool v) + MLP(maxpool v)) * v."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.ca = ChannelAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca(x) * x

    def masks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"channel": self.ca(x)}


class CBAMSpatial(nn.Module):
    """CBAM's spatial attention alone: sigmoid(conv([mean_c v, max_c v])) * v. It has no per-channel weights."""

    def __init__(self, channels: int, spatial_kernel: int = 7):
        super().__init__()
        self.sa = SpatialAttention(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sa(x) * x

    def masks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"spatial": self.sa(x)}


class SE(nn.Module):
    """Squeeze-and-excitation: sigmoid(W2 relu(W1 avgpool(v) + b1) + b2) * v, hidden = max(C // reduction, 4).

    `bias=False` drops the two biases (the SE paper's journal version finds that better on ResNets)."""

    def __init__(self, channels: int, reduction: int = 16, bias: bool = True):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)

    def channel_mask(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))  # (B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mask(x) * x

    def masks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"channel": self.channel_mask(x)}


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA's adaptive kernel: t = int(|(log2 C + beta) / gamma|), the odd number t or t + 1, at least 3."""
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    t = int(abs((math.log2(channels) + beta) / gamma))
    return max(t if t % 2 else t + 1, 3)


class ECA(nn.Module):
    """Efficient channel attention: sigmoid(conv1d_k(avgpool v across channels)) * v, no bias, k adaptive."""

    def __init__(self, channels: int, gamma: float = 2, beta: float = 1):
        super().__init__()
        k = eca_kernel_size(channels, gamma, beta)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def channel_mask(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = F.adaptive_avg_pool2d(x, 1).flatten(1).unsqueeze(1)  # (B, 1, C): channels as a sequence
        return torch.sigmoid(self.conv(squeezed)).transpose(1, 2).unsqueeze(-1)  # (B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mask(x) * x

    def masks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"channel": self.channel_mask(x)}


# name (configs/attention/<name>.yaml) -> module class
ATTENTIONS: dict[str, type[nn.Module]] = {
    "cbam": CBAM,
    "cbam_channel": CBAMChannel,
    "cbam_spatial": CBAMSpatial,
    "se": SE,
    "eca": ECA,
}


def attention_keys(name: str) -> tuple[str, ...]:
    """The keys an attention takes besides the channel count, e.g. ("reduction", "bias") for se."""
    return tuple(inspect.signature(ATTENTIONS[name]).parameters)[1:]


def attention_layer(name: str, **keys) -> Callable[[int], nn.Module]:
    """The `channels -> module` factory for attention `name` with its keys (the rest keep their defaults)."""
    if name not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {name!r}")
    unknown = set(keys) - set(attention_keys(name))
    if unknown:
        raise ValueError(f"attention {name} takes {', '.join(attention_keys(name))}, not {', '.join(sorted(unknown))}")
    return partial(ATTENTIONS[name], **keys)

"""The residual block with the attention at one of four placements.

    none          y = relu(skip(x) + F(x))
    inside   (p1) y = relu(skip(x) + gate(F(x)))
    post_add (p2) z = relu(skip(x) + F(x)); y = gate(z)
    pre      (p3) y = relu(skip(x) + F(gate(x)))

gate(v) = A(v) * v, or with the controlled gate (1 - lam) * v + lam * A(v) * v,
lam = sigmoid(lam_logit), one scalar per block.
"""

import math
from typing import Callable

import torch
from torch import nn

from resattn.attention import CBAM

PLACEMENTS = ("none", "inside", "post_add", "pre")


class Branch(nn.Module):
    """F: conv3x3(stride)-BN-ReLU-conv3x3-BN, the ResNet basic branch."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


def make_skip(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride != 1 or in_ch != out_ch:
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
    return nn.Identity()


def lam_to_logit(lam_init: float) -> torch.Tensor:
    # Clamped as in the seed notebook, so lam_init = 0 or 1 gives a finite logit.
    lam = torch.tensor(min(max(float(lam_init), 1e-4), 1 - 1e-4))
    return torch.log(lam / (1 - lam))


class ResidualBlock(nn.Module):
    """A basic residual block; `attn_layer(channels)` builds the attention module A."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        placement: str = "pre",
        controlled: bool = False,
        lam_init: float = 0.1,
        lam_learnable: bool = True,
        attn_layer: Callable[[int], nn.Module] = CBAM,
    ):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        if not 0.0 <= lam_init <= 1.0 or math.isnan(lam_init):
            raise ValueError(f"lam_init must be in [0, 1], got {lam_init}")
        self.placement = placement
        self.controlled = controlled and placement != "none"
        if self.controlled:
            if lam_learnable:
                self.lam_logit = nn.Parameter(lam_to_logit(lam_init))
            else:
                self.register_buffer("lam_logit", lam_to_logit(lam_init))
        # A sees the block's input in p3 and its output in p1 and p2.
        self.attn = None if placement == "none" else attn_layer(in_ch if placement == "pre" else out_ch)
        self.F = Branch(in_ch, out_ch, stride)
        self.skip = make_skip(in_ch, out_ch, stride)
        self.out_act = nn.ReLU(inplace=True)

    @property
    def lam(self) -> torch.Tensor | None:
        return torch.sigmoid(self.lam_logit) if self.controlled else None

    def gate(self, v: torch.Tensor) -> torch.Tensor:
        v_att = self.attn(v)
        if not self.controlled:
            return v_att
        lam = torch.sigmoid(self.lam_logit)
        return (1.0 - lam) * v + lam * v_att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.skip(x)
        if self.placement == "pre":
            return self.out_act(identity + self.F(self.gate(x)))
        f = self.F(x)
        if self.placement == "inside":
            f = self.gate(f)
        y = self.out_act(identity + f)
        return self.gate(y) if self.placement == "post_add" else y

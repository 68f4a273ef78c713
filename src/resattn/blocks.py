"""The residual block with the attention at one of five placements.

    none          y = relu(skip(x) + F(x))
    inside   (p1) y = relu(skip(x) + gate(F(x)))
    post_add (p2) z = relu(skip(x) + F(x)); y = gate(z)
    pre      (p3) y = relu(skip(x) + F(gate(x)))
    skip     (p4) y = relu(gate(skip(x)) + F(x))      the SE paper's SE-Identity

gate(v) = A(v) * v, or with the controlled gate (1 - lam) * v + lam * A(v) * v, lam = sigmoid(lam_logit):
one scalar per block (lam_shape "scalar") or one per channel of v (lam_shape "channel", LayerScale-like).

skip(x) is the identity when the shape stays; otherwise `skip_layer` decides: a 1x1 conv + BN
projection (`projection_skip`, the seed notebook's, He et al.'s option B) or the parameter-free
subsampling with zero-padded channels (`zero_pad_skip`, option A of the CIFAR ResNets).

Shared initial weights: the attention module is built in a random stream of its own (`own_stream`),
so the branch, the shortcut and every module a network builds around its blocks draw the same numbers
from the default generator whatever the placement and the attention. For one seed, every module two
arms both have starts from the same weights, and a paired difference between arms measures the
placement, not the draw (common random numbers). λ starts at lam_init: it draws nothing.
"""

import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from resattn.attention import CBAM

PLACEMENTS = ("none", "inside", "post_add", "pre", "skip")
LAM_SHAPES = ("scalar", "channel")


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


def projection_skip(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride != 1 or in_ch != out_ch:
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
    return nn.Identity()


class ZeroPadSkip(nn.Module):
    """x subsampled by `stride`, with out_ch - in_ch zero channels appended: no parameters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"a zero-padding shortcut cannot reduce channels ({in_ch} -> {out_ch})")
        self.extra_channels, self.stride = out_ch - in_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra_channels))


def zero_pad_skip(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    return ZeroPadSkip(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else nn.Identity()


@contextmanager
def own_stream(salt: str) -> Iterator[None]:
    """Draws inside come from a stream of their own and leave the default CPU generator where it was.

    The stream's seed is a hash of the default generator's state (read, not advanced) and `salt`: it is
    fixed by the run's seed and the point of the construction, and differs between the blocks of one
    network and between seeds. Only the CPU generator is forked (models are built on the CPU)."""
    state = torch.get_rng_state()
    digest = hashlib.sha256(state.numpy().tobytes() + salt.encode()).digest()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        yield


def lam_to_logit(lam_init: float) -> torch.Tensor:
    # Clamped as in the seed notebook, so lam_init = 0 or 1 gives a finite logit.
    lam = torch.tensor(min(max(float(lam_init), 1e-4), 1 - 1e-4))
    return torch.log(lam / (1 - lam))


class ResidualBlock(nn.Module):
    """A basic residual block; `attn_layer(channels)` builds the attention module A and
    `skip_layer(in_ch, out_ch, stride)` the shortcut."""

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
        lam_shape: str = "scalar",
        skip_layer: Callable[[int, int, int], nn.Module] = projection_skip,
    ):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        if lam_shape not in LAM_SHAPES:
            raise ValueError(f"lam_shape must be one of {', '.join(LAM_SHAPES)}, got {lam_shape!r}")
        if not 0.0 <= lam_init <= 1.0 or math.isnan(lam_init):
            raise ValueError(f"lam_init must be in [0, 1], got {lam_init}")
        self.placement = placement
        self.controlled = controlled and placement != "none"
        # The gated tensor: the block's input in p3, its output (or shortcut) everywhere else.
        gated_channels = in_ch if placement == "pre" else out_ch
        if self.controlled:
            logit = lam_to_logit(lam_init)
            if lam_shape == "channel":
                logit = logit.repeat(gated_channels)
            if lam_learnable:
                self.lam_logit = nn.Parameter(logit)
            else:
                self.register_buffer("lam_logit", logit)
        # Registered before F (the notebook's order), but drawn from its own stream: F and the shortcut
        # then draw what they would draw in any other arm.
        if placement == "none":
            self.attn = None
        else:
            with own_stream("attention"):
                self.attn = attn_layer(gated_channels)
        self.F = Branch(in_ch, out_ch, stride)
        self.skip = skip_layer(in_ch, out_ch, stride)
        self.out_act = nn.ReLU(inplace=True)

    @property
    def lam(self) -> torch.Tensor | None:
        """sigmoid(lam_logit): 0-d for one λ per block, (C,) for one per channel; None without a controlled gate."""
        return torch.sigmoid(self.lam_logit) if self.controlled else None

    def gate(self, v: torch.Tensor) -> torch.Tensor:
        v_att = self.attn(v)
        if not self.controlled:
            return v_att
        lam = torch.sigmoid(self.lam_logit)
        if lam.ndim:  # per channel: broadcast over (B, C, H, W)
            lam = lam.view(1, -1, 1, 1)
        return (1.0 - lam) * v + lam * v_att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.skip(x)
        if self.placement == "pre":
            return self.out_act(identity + self.F(self.gate(x)))
        f = self.F(x)
        if self.placement == "inside":
            f = self.gate(f)
        elif self.placement == "skip":
            identity = self.gate(identity)
        y = self.out_act(identity + f)
        return self.gate(y) if self.placement == "post_add" else y

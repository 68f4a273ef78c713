"""SimpleCNN from the seed notebook, with the attention placement as a parameter, and what every backbone shares."""

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from resattn.attention import attention_layer
from resattn.blocks import ResidualBlock, projection_skip

# pattern name -> (placement, controlled gate)
PATTERNS = {
    "baseline": ("none", False),
    "p1": ("inside", False),
    "p2": ("post_add", False),
    "p3": ("pre", False),
    "p3_controlled": ("pre", True),
    "p4": ("skip", False),  # the SE paper's SE-Identity
}

AttentionArg = str | Callable[[int], nn.Module]


def block_layer(
    pattern: str,
    attention: AttentionArg,
    controlled: bool | None,
    lam_init: float,
    lam_learnable: bool,
    lam_shape: str,
    skip_layer=projection_skip,
) -> Callable[..., ResidualBlock]:
    """`(in_ch, out_ch, stride) -> ResidualBlock` with the pattern's placement and gate.

    `attention` is a name in resattn.attention.ATTENTIONS (with its default keys) or a `channels -> module`
    factory such as `attention_layer("se", reduction=8)`. `controlled=None` takes the pattern's own gate."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    placement, default_controlled = PATTERNS[pattern]
    return partial(
        ResidualBlock,
        placement=placement,
        controlled=default_controlled if controlled is None else controlled,
        lam_init=lam_init,
        lam_learnable=lam_learnable,
        attn_layer=attention_layer(attention) if isinstance(attention, str) else attention,
        lam_shape=lam_shape,
        skip_layer=skip_layer,
    )


class ResidualNet(nn.Module):
    """What the trainer and the tracker read from any backbone: its residual blocks and their λs."""

    @property
    def blocks(self) -> dict[str, ResidualBlock]:
        """The residual blocks by their module names, in forward order (they are registered in that order)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, ResidualBlock)}

    def lambdas(self) -> dict[str, torch.Tensor]:
        """λ per controlled block: a 0-d tensor, or (C,) with lam_shape "channel" (read them only when logging)."""
        return {name: b.lam.detach() for name, b in self.blocks.items() if b.controlled}


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


NOTEBOOK_NAMES = {"p3_1.": "block1.", "p3_2.": "block2."}


def _accept_notebook_names(module, state_dict, prefix, *args) -> None:
    """Load the seed notebook's SimpleCNN_P3_Controlled weights as they are: its blocks are p3_1, p3_2."""
    for key in list(state_dict):
        for old, new in NOTEBOOK_NAMES.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)


class SimpleCNN(ResidualNet):
    """stem -> conv1 -> block1 -> block2 (stride 2) -> conv2 -> head.

    `controlled=None` takes the pattern's own gate (controlled only for p3_controlled);
    True or False overrides it, so placement and gating can be varied separately.
    `width` scales every channel count (1.0 = the notebook's 32/64/128).
    """

    def __init__(
        self,
        pattern: str = "p3_controlled",
        num_classes: int = 10,
        lam_init: float = 0.1,
        lam_learnable: bool = True,
        controlled: bool | None = None,
        attention: AttentionArg = "cbam",
        lam_shape: str = "scalar",
        width: float = 1.0,
    ):
        super().__init__()
        block = block_layer(pattern, attention, controlled, lam_init, lam_learnable, lam_shape)
        self.pattern = pattern
        c1, c2, c3 = (max(1, round(c * width)) for c in (32, 64, 128))
        self.stem = conv_bn_relu(3, c1)
        self.conv1 = conv_bn_relu(c1, c2)
        self.block1 = block(c2, c2, stride=1)
        self.block2 = block(c2, c3, stride=2)
        self.conv2 = conv_bn_relu(c3, c3)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, num_classes))
        self.register_load_state_dict_pre_hook(_accept_notebook_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.stem(x))
        x = self.block2(self.block1(x))
        return self.head(self.conv2(x))

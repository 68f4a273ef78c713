"""SimpleCNN from the seed notebook, with the attention placement as a parameter."""

from functools import partial

import torch
from torch import nn

from resattn.attention import CBAM
from resattn.blocks import ResidualBlock

# pattern name -> (placement, controlled gate)
PATTERNS = {
    "baseline": ("none", False),
    "p1": ("inside", False),
    "p2": ("post_add", False),
    "p3": ("pre", False),
    "p3_controlled": ("pre", True),
}


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
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


class SimpleCNN(nn.Module):
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
        reduction: int = 16,
        spatial_kernel: int = 7,
        width: float = 1.0,
    ):
        super().__init__()
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
        placement, default_controlled = PATTERNS[pattern]
        self.pattern = pattern
        c1, c2, c3 = (max(1, round(c * width)) for c in (32, 64, 128))
        attn = partial(CBAM, reduction=reduction, spatial_kernel=spatial_kernel)
        block = partial(
            ResidualBlock,
            placement=placement,
            controlled=default_controlled if controlled is None else controlled,
            lam_init=lam_init,
            lam_learnable=lam_learnable,
            attn_layer=attn,
        )
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

    @property
    def blocks(self) -> dict[str, ResidualBlock]:
        return {"block1": self.block1, "block2": self.block2}

    def lambdas(self) -> dict[str, torch.Tensor]:
        """lam per controlled block, as 0-d tensors (read them with .item() only when logging)."""
        return {name: b.lam.detach() for name, b in self.blocks.items() if b.controlled}

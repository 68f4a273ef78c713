"""The CIFAR ResNets of He et al. 2016 (section 4.2), with the attention placement as a parameter.

3x3 conv 3->16, BN, ReLU; three stages of n basic blocks at 16, 32 and 64 channels (stride 2 at the
first block of stages 2 and 3); global average pool; linear. depth = 6n + 2.
"""

from collections import OrderedDict

import torch
from torch import nn

from resattn.blocks import own_stream, projection_skip, zero_pad_skip
from resattn.model import AttentionArg, ResidualNet, block_layer

DEPTHS = (20, 32, 44, 56, 110)
# model.shortcut -> the skip of a block that changes shape (A: the paper's CIFAR choice, parameter-free)
SHORTCUTS = {"A": zero_pad_skip, "B": projection_skip}


class CifarResNet(ResidualNet):
    """ResNet-`depth` for 32x32 images; its blocks are named stage1.block0 ... stage3.block{n-1}.

    Every block gets the pattern's placement and gate and the attention (a name in
    resattn.attention.ATTENTIONS or a `channels -> module` factory). `shortcut` "A" subsamples and
    zero-pads channels, "B" projects with a 1x1 conv + BN. `width` scales every channel count.
    With depth 20, shortcut A and pattern "baseline" this is the paper's 0.27M-parameter ResNet-20.
    """

    def __init__(
        self,
        depth: int = 20,
        pattern: str = "baseline",
        attention: AttentionArg = "cbam",
        num_classes: int = 10,
        lam_init: float = 0.1,
        lam_learnable: bool = True,
        controlled: bool | None = None,
        lam_shape: str = "scalar",
        shortcut: str = "A",
        width: float = 1.0,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be 6n+2, one of {', '.join(map(str, DEPTHS))}, got {depth!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        block = block_layer(pattern, attention, controlled, lam_init, lam_learnable, lam_shape, SHORTCUTS[shortcut])
        self.pattern, self.depth = pattern, depth
        n = (depth - 2) // 6
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        in_ch = widths[0]
        for s, out_ch in enumerate(widths):
            stage = OrderedDict()
            for i in range(n):
                stage[f"block{i}"] = block(in_ch, out_ch, stride=2 if s > 0 and i == 0 else 1)
                in_ch = out_ch
            self.add_module(f"stage{s + 1}", nn.Sequential(stage))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))
        # He et al.'s initialisation, as torchvision's ResNets. The attentions' convs draw from a stream of
        # their own, after the common convs, so every arm's common convs get the same weights (blocks.own_stream).
        attn = {id(m) for b in self.blocks.values() if b.attn is not None for m in b.attn.modules()}
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        for m in convs:
            if id(m) not in attn:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        with own_stream("attention init"):
            for m in convs:
                if id(m) in attn:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(x)

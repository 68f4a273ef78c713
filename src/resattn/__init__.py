"""resattn: where in a residual block should the attention sit?"""

from resattn.attention import CBAM, ECA, SE
from resattn.blocks import ResidualBlock
from resattn.model import PATTERNS, SimpleCNN
from resattn.resnet import CifarResNet

__all__ = ["CBAM", "CifarResNet", "ECA", "PATTERNS", "ResidualBlock", "SE", "SimpleCNN"]

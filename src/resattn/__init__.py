"""resattn: where in a residual block should CBAM sit?"""

from resattn.attention import CBAM
from resattn.blocks import ResidualBlock
from resattn.model import PATTERNS, SimpleCNN

__all__ = ["CBAM", "PATTERNS", "ResidualBlock", "SimpleCNN"]

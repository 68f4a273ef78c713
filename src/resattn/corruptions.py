"""The CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019) as batched torch operations.

Each function follows the published generator (make_cifar_c.py in hendrycks/robustness) and its
severities 1-5. It takes and returns uint8 batches (N, 3, H, W) on any device, with no per-image Python
work (JPEG alone goes through PIL image by image). Pixels go to [0, 1] floats, are
corrupted, clipped to [0, 1] and rounded to uint8; the generator truncates instead (np.uint8), which
darkens its images by half a level on average. Not included: the weather corruptions (fog, frost, snow,
spatter) and the blurs that need ImageMagick or cv2 (defocus, glass, motion, zoom).

Severity is harshness for all but saturate: its severities 1-2 desaturate (x0.3, x0.1) and 3-5
oversaturate, so severity 3 (x1.5) is milder than 2.

Randomness: every draw comes from the `generator` passed in, on the generator's device, and is then
moved to the images' device; so a CPU generator with a given seed gives the same noise whether the
images are on the CPU or a GPU. `generator=None` draws from torch's default generator.

Same bits on every device: whatever feeds a draw (shot noise's Poisson rates, which set how many
uniforms torch.poisson's rejection sampler takes) is computed on the generator's device, from the
integer levels, never from the images' device arithmetic. A GPU computes x / 255 as x * (1 / 255)
(PyTorch's CUDA division by a scalar multiplies by its reciprocal), a last-bit difference; one such
rate desyncs the whole stream after it. Levels become [0, 1] floats through a table computed once on
the CPU and indexed on the device, and no scalar division runs on the device, so the elementwise
corruptions give the CPU's bits anywhere. Matrix products and means (blur, pixelate, contrast) may still
sum in another order on a GPU and round a tie the other way.
"""

import functools
import io

import numpy as np
import torch
from PIL import Image

# Severity 1..5 parameters, as in make_cifar_c.py.
PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std on [0, 1] pixels
    "shot_noise": (500, 250, 100, 75, 50),  # Poisson rate per unit intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of values set to 0 or 1
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # std of the multiplicative noise
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on the distance from the image's channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),  # HSV saturation * c0 + c1
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downsampled side as a fraction of the side
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
}
FAMILIES = {
    "noise": ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"],
    "blur": ["gaussian_blur"],
    "digital": ["contrast", "brightness", "saturate", "pixelate", "jpeg_compression"],
}
SEVERITIES = (1, 2, 3, 4, 5)


# level / 255 for the 256 levels, computed once by the CPU's IEEE division: the same float32 bits the CPU
# path always had, and, indexed on any device, the same bits there (see "Same bits" above).
_UNIT_LEVELS = torch.arange(256, dtype=torch.float32) / 255
_UNIT_LEVELS_64 = torch.arange(256, dtype=torch.float64) / 255


@functools.cache
def _levels_on(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return (_UNIT_LEVELS_64 if dtype == torch.float64 else _UNIT_LEVELS).to(device)


def _unit(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 levels -> level / 255 as `dtype`, bit for bit what the CPU computes, on the images' device."""
    return _levels_on(images.device, dtype)[images.long()]


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _exact(images: torch.Tensor) -> torch.Tensor:
    """The images as float64 for the matrix products (on CUDA, float32 ones may run in TF32, which the trainer
    allows, and round a level off here and there); float32 on MPS, which has no float64 (and no TF32)."""
    return images.to(_exact_dtype(images.device))


def _exact_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _device_of(generator: torch.Generator | None, images: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else images.device


def _randn(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(images.shape, generator=generator, device=_device_of(generator, images)).to(images.device)


def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    std = PARAMS["gaussian_noise"][severity - 1]
    return _uint8(_unit(images) + std * _randn(images, generator))


def shot_noise(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    # All of it where the generator lives: the rates decide how many uniforms each Poisson draw takes, so one
    # last-bit difference in a rate shifts every draw after it (issue 16: 44 levels apart on an H200). Only
    # the uint8 images travel, exactly, and the uint8 result comes back.
    rate = PARAMS["shot_noise"][severity - 1]
    levels = images.to(_device_of(generator, images))
    counts = torch.poisson(_unit(levels).mul_(rate), generator=generator)
    return _uint8(counts.div_(rate)).to(images.device)


def impulse_noise(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    # skimage's random_noise(mode="s&p"): each value (per channel) is hit with probability c, and a hit is
    # salt (1) or pepper (0) with equal odds; one uniform draw decides both.
    c = PARAMS["impulse_noise"][severity - 1]
    u = torch.rand(images.shape, generator=generator, device=_device_of(generator, images)).to(images.device)
    salt = torch.tensor(255, dtype=torch.uint8, device=images.device)
    pepper = torch.tensor(0, dtype=torch.uint8, device=images.device)
    return torch.where(u < c / 2, salt, torch.where(u < c, pepper, images))


def speckle_noise(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    std = PARAMS["speckle_noise"][severity - 1]
    x = _unit(images)
    return _uint8(x + x * std * _randn(images, generator))


def gaussian_matrix(size: int, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """(size, size) matrix M with M @ column = the column blurred as skimage.filters.gaussian blurs it.

    That is scipy.ndimage's Gaussian: radius int(truncate * sigma + 0.5), and mode "nearest", the edge
    pixel repeated, so the taps that fall off the edge add their weight to the edge pixel."""
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    source = (torch.arange(size)[:, None] + taps.long()).clamp(0, size - 1)
    return torch.zeros(size, size, dtype=torch.float64).scatter_add_(1, source, kernel.expand(size, -1))


def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    # The generator calls skimage.filters.gaussian(x, sigma, multichannel=True): each channel on its own,
    # separable, mode "nearest", truncate 4. Two small matrix products do the same (faster than conv2d on CPU).
    sigma = PARAMS["gaussian_blur"][severity - 1]
    h, w = images.shape[-2:]
    x = _unit(images, _exact_dtype(images.device))
    x = x @ gaussian_matrix(w, sigma).to(x).T
    return _uint8(gaussian_matrix(h, sigma).to(x) @ x)


def contrast(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    c = PARAMS["contrast"][severity - 1]
    x = _unit(images)
    mean = x.mean(dim=(2, 3), keepdim=True)  # each image's own mean, per channel
    return _uint8((x - mean) * c + mean)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV in [0, 1], the formulas of skimage.color.rgb2hsv."""
    r, g, b = rgb.unbind(1)
    value = rgb.amax(1)
    delta = value - rgb.amin(1)
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-12), 0.0)
    safe_delta = torch.where(delta > 0, delta, 1.0)
    hue = torch.where(
        b == value, 4 + (r - g) / safe_delta, torch.where(g == value, 2 + (b - r) / safe_delta, (g - b) / safe_delta)
    )
    hue = torch.where(delta > 0, (hue * (1 / 6)) % 1, 0.0)  # * (1/6), not / 6: the same on a GPU (see the top)
    return torch.stack([hue, saturation, value], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """The inverse of rgb_to_hsv, (N, 3, H, W) -> (N, 3, H, W).

    skimage's six-sector table in closed form: channel n (R 5, G 3, B 1) is v - v*s*clamp(min(k, 4 - k), 0, 1)
    with k = (n + 6h) mod 6."""
    h, s, v = hsv.unsqueeze(2).unbind(1)  # each (N, 1, H, W)
    k = (torch.tensor([5.0, 3.0, 1.0], device=hsv.device).view(1, 3, 1, 1) + 6 * h) % 6
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def brightness(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    hsv = rgb_to_hsv(_unit(images))
    hsv[:, 2] = (hsv[:, 2] + PARAMS["brightness"][severity - 1]).clamp(0, 1)
    return _uint8(hsv_to_rgb(hsv))


def saturate(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    scale, shift = PARAMS["saturate"][severity - 1]
    hsv = rgb_to_hsv(_unit(images))
    hsv[:, 1] = (hsv[:, 1] * scale + shift).clamp(0, 1)
    return _uint8(hsv_to_rgb(hsv))


def pil_box_weights(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) weights of PIL's Image.resize(..., BOX) along one axis.

    PIL samples its box filter at source pixel centres: output pixel i averages the source pixels whose
    centres lie in (centre_i - support, centre_i + support], centre_i = (i + 0.5) * scale,
    support = max(scale, 1) / 2. Upsampling thus picks one pixel (nearest, half-pixel centres)."""
    scale = size_in / size_out
    support = max(scale, 1.0) / 2
    source_centres = torch.arange(size_in, dtype=torch.float64) + 0.5
    offset = source_centres - (torch.arange(size_out, dtype=torch.float64)[:, None] + 0.5) * scale
    weights = ((offset > -support) & (offset <= support)).double()
    return weights / weights.sum(1, keepdim=True)


def _pil_box_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize float pixels in 0..255 as PIL does an 8-bit image: horizontal pass, rounded, then vertical, rounded."""
    x = x @ pil_box_weights(x.shape[-1], width).to(x).T
    x = torch.floor(x + 0.5)  # PIL rounds halves up; torch.round would round them to even
    x = pil_box_weights(x.shape[-2], height).to(x) @ x
    return torch.floor(x + 0.5)


def pixelate(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    # The generator: PIL resize to int(32*c) square with BOX, then back to 32 with BOX.
    c = PARAMS["pixelate"][severity - 1]
    h, w = images.shape[-2:]
    small = _pil_box_resize(_exact(images), max(1, int(h * c)), max(1, int(w * c)))
    return _pil_box_resize(small, h, w).to(torch.uint8)


def jpeg_compression(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    # PIL, as the generator: libjpeg image by image on the CPU, whatever the images' device (a GPU codec would
    # give a GPU run other images). torchvision.io's batched codec writes the same bytes 3x faster, but it is
    # deprecated since torchvision 0.29; at 0.2 ms an image here, the model's evaluation costs far more.
    quality = PARAMS["jpeg_compression"][severity - 1]
    pixels = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "brightness": brightness,
    "saturate": saturate,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`images` (N, 3, H, W) uint8 under corruption `name` at `severity` (1..5): uint8 (N, 3, H, W), same device."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES or isinstance(severity, bool):
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if len(images) == 0:
        return images.clone()
    return CORRUPTIONS[name](images, severity, generator)

"""The CIFAR-10-C corruptions against their formulas and the libraries the published generator used."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import colors
from PIL import Image
from scipy import ndimage, stats

from resattn.corruptions import CORRUPTIONS, FAMILIES, PARAMS, SEVERITIES, corrupt, hsv_to_rgb, rgb_to_hsv

NOISE = FAMILIES["noise"]  # the random ones


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """48 smooth random images (colour blobs, natural-ish) and 8 of pure pixel noise."""
    g = seeded(0)
    smooth = F.interpolate(torch.rand(48, 3, 6, 6, generator=g), size=32, mode="bicubic").clamp(0, 1)
    noise = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)
    return torch.cat([(smooth * 255).round().to(torch.uint8), noise])


def grey(level: int, n: int = 128) -> torch.Tensor:
    return torch.full((n, 3, 32, 32), level, dtype=torch.uint8)


def unit_nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).double().numpy() / 255


def to_uint8(nhwc: np.ndarray) -> torch.Tensor:
    """What the generator would give, rounded as the issue asks: clip to [0, 1], * 255, round."""
    return torch.from_numpy(np.round(np.clip(nhwc, 0, 1) * 255)).permute(0, 3, 1, 2).to(torch.int)


def assert_within_one_level(out: torch.Tensor, expected: torch.Tensor, max_share_off: float, what=None) -> None:
    diff = (out.int() - expected.int()).abs()
    assert diff.max() <= 1, (what, diff.max())
    share = (diff > 0).double().mean().item()
    assert share <= max_share_off, (what, share)  # off by one only at rounding ties


def test_every_corruption_is_in_one_family_with_the_issues_severities():
    assert sorted(name for family in FAMILIES.values() for name in family) == sorted(CORRUPTIONS)
    assert PARAMS == {  # issue 10, as in make_cifar_c.py
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
    }


def test_every_corruption_gives_changed_uint8_images_of_the_same_shape(images):
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            out = corrupt(images, name, severity, seeded(1))
            assert out.dtype == torch.uint8 and out.shape == images.shape and out.device == images.device
            assert not torch.equal(out, images), (name, severity)


@pytest.mark.parametrize("name", NOISE)
def test_pixels_are_clipped_not_wrapped_around(name):
    # Noise pushes half of white's values above 1 and half of black's below 0 (or keeps them at 0): clipped,
    # they stay 255 and 0; wrapped around, they would land at the other end.
    white, black = corrupt(grey(255, 8), name, 5, seeded(0)), corrupt(grey(0, 8), name, 5, seeded(0))
    assert (white == 255).double().mean() > 0.3 and (black == 0).double().mean() > 0.3


def test_invalid_arguments_are_refused(images):
    for args in (("fog", 1), ("gaussian_noise", 0), ("gaussian_noise", 6), ("gaussian_noise", True)):
        with pytest.raises(ValueError):
            corrupt(images, *args)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.float(), "contrast", 1)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_has_the_severity_std(severity):
    # mid-grey: 128/255 is over 4.9 std from either end even at severity 5, so clipping does not bite
    noise = (corrupt(grey(128), "gaussian_noise", severity, seeded(0)).double() - 128) / 255
    std = PARAMS["gaussian_noise"][severity - 1]
    assert abs(noise.mean()) < 0.02 * std
    assert noise.std().item() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_shot_noise_is_poisson_counts_divided_by_the_rate(severity):
    rate, level = PARAMS["shot_noise"][severity - 1], 128 / 255
    out = corrupt(grey(128), "shot_noise", severity, seeded(0)).double()
    # Expected: k ~ Poisson(level * rate), then round(255 * k / rate); the rounding alone adds up to 3% of
    # variance here (a step of 1.02 levels per count at rate 250), so it is part of the reference.
    counts = np.arange(2 * rate)
    values = np.clip(np.round(255 * counts / rate), 0, 255)
    pmf = stats.poisson.pmf(counts, level * rate)
    mean = (pmf * values).sum()
    assert out.mean().item() == pytest.approx(mean, rel=0.002)
    assert out.var().item() == pytest.approx((pmf * (values - mean) ** 2).sum(), rel=0.02)
    if rate < 255:  # then every value is round(255 * k / rate) for a whole count k
        assert torch.isin(out, torch.from_numpy(values)).all()


@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_noise_sets_the_severity_fraction_to_black_or_white(severity):
    fraction = PARAMS["impulse_noise"][severity - 1]
    out = corrupt(grey(128), "impulse_noise", severity, seeded(0))
    assert ((out == 0) | (out == 128) | (out == 255)).all()
    salt, pepper = (out == 255).double().mean().item(), (out == 0).double().mean().item()
    assert salt == pytest.approx(fraction / 2, rel=0.1) and pepper == pytest.approx(fraction / 2, rel=0.1)
    hit = out != 128  # per value, as skimage's random_noise: a hit in one channel says little of the others
    assert hit[:, 1][hit[:, 0]].double().mean() < 3 * fraction


@pytest.mark.parametrize("severity", SEVERITIES)
def test_speckle_noise_std_scales_with_the_pixel(severity):
    c = PARAMS["speckle_noise"][severity - 1]
    for level in (40, 120):
        noise = (corrupt(grey(level), "speckle_noise", severity, seeded(0)).double() - level) / 255
        assert abs(noise.mean()) < 0.02 * c * level / 255
        assert noise.std().item() == pytest.approx(c * level / 255, rel=0.03)


def test_gaussian_blur_is_skimages_gaussian(images):
    # skimage.filters.gaussian(x, sigma, multichannel=True) = scipy's gaussian_filter, mode nearest, truncate 4
    for severity in SEVERITIES:
        sigma = PARAMS["gaussian_blur"][severity - 1]
        expected = ndimage.gaussian_filter(unit_nhwc(images), sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)
        assert_within_one_level(corrupt(images, "gaussian_blur", severity), to_uint8(expected), 1e-3)


def test_contrast_scales_the_distance_from_each_images_channel_mean(images):
    x = unit_nhwc(images)
    mean = x.mean(axis=(1, 2), keepdims=True)
    for severity in SEVERITIES:
        c = PARAMS["contrast"][severity - 1]
        assert_within_one_level(corrupt(images, "contrast", severity), to_uint8((x - mean) * c + mean), 1e-3)


def test_hsv_conversion_matches_matplotlib_and_round_trips(images):
    rgb = images.float() / 255
    hsv = rgb_to_hsv(rgb)
    expected = colors.rgb_to_hsv(unit_nhwc(images))
    assert np.abs(hsv.permute(0, 2, 3, 1).double().numpy() - expected).max() < 1e-5
    assert (hsv_to_rgb(hsv) - rgb).abs().max() < 1e-5
    assert (
        np.abs(
            hsv_to_rgb(torch.from_numpy(expected).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
            - colors.hsv_to_rgb(expected)
        ).max()
        < 1e-9
    )


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_brightness_and_saturate_change_hsv_value_and_saturation(images, name):
    x = colors.rgb_to_hsv(unit_nhwc(torch.cat([images, grey(90, 2)])))  # grey: saturate's shift tints it red
    for severity in SEVERITIES:
        hsv, c = x.copy(), PARAMS[name][severity - 1]
        if name == "brightness":
            hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        else:
            hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
        out = corrupt(torch.cat([images, grey(90, 2)]), name, severity)
        # brightness c = 0.1 and 0.3 put many values on exact half levels (c * 255 = 25.5, 76.5): float32
        # and float64 round those differently, so only the size of the difference is exact
        assert_within_one_level(out, to_uint8(colors.hsv_to_rgb(hsv)), 0.2)


def test_pixelate_is_pils_box_resize_down_and_up(images):
    for severity in SEVERITIES:
        side = int(32 * PARAMS["pixelate"][severity - 1])
        expected = [
            np.array(
                Image.fromarray(im.permute(1, 2, 0).numpy()).resize((side, side), Image.BOX).resize((32, 32), Image.BOX)
            )
            for im in images
        ]
        expected = torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2)
        assert torch.equal(corrupt(images, "pixelate", severity), expected)


def test_jpeg_compression_is_pils_jpeg_at_the_severity_quality(images):
    for severity in SEVERITIES:
        expected = []
        for im in images:
            buffer = io.BytesIO()
            quality = PARAMS["jpeg_compression"][severity - 1]
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
            expected.append(np.array(Image.open(buffer)))
        expected = torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2)
        assert torch.equal(corrupt(images, "jpeg_compression", severity), expected)


def test_same_seed_same_images_and_another_seed_other_noise(images):
    for name in CORRUPTIONS:
        first = corrupt(images, name, 3, seeded(7))
        assert torch.equal(first, corrupt(images, name, 3, seeded(7))), name
        assert torch.equal(first, corrupt(images, name, 3, seeded(8))) == (name not in NOISE), name


def test_severities_go_from_mild_to_harsh(images):
    """The distance from the clean image grows with severity; saturate desaturates at 1-2 and oversaturates
    at 3-5 (as in the generator), so it grows within each of the two."""
    for name in CORRUPTIONS:
        distance = [
            (corrupt(images, name, s, seeded(1)).float() - images.float()).abs().mean().item() for s in SEVERITIES
        ]
        runs = [distance[:2], distance[2:]] if name == "saturate" else [distance]
        for run in runs:
            assert all(a < b for a, b in zip(run, run[1:])), (name, distance)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_gives_the_images_the_cpu_gives(images):
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            on_gpu = corrupt(images.cuda(), name, severity, seeded(3))
            assert on_gpu.is_cuda
            # the same CPU draws: the noise is identical; float reductions may round a tie the other way
            assert_within_one_level(on_gpu.cpu(), corrupt(images, name, severity, seeded(3)), 1e-3, (name, severity))


# ---------------------------------------------------------------- the GPU's arithmetic, emulated on the CPU
# PyTorch's CUDA true division by a scalar (BinaryDivTrueKernel.cu) multiplies by the scalar's reciprocal,
# computed in the tensor's own precision: x / 255 there is x * float32(1 / 255), a last-bit difference from
# the CPU's x / 255 for some levels. OnGpu is a tensor that divides that way, and stops doing so once moved
# with .to(device) or .cpu(): what runs on it is what a GPU would compute; what is moved to the generator's
# device runs as on the CPU.

DIVISIONS = {
    torch.div,
    torch.true_divide,
    torch.Tensor.div,
    torch.Tensor.div_,
    torch.Tensor.true_divide,
    torch.Tensor.true_divide_,
    torch.Tensor.__truediv__,
    torch.Tensor.__itruediv__,
}


def _moves_to_a_device(func, args, kwargs) -> bool:
    if func is torch.Tensor.cpu:
        return True
    return func is torch.Tensor.to and ("device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args[1:]))


class OnGpu(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DIVISIONS and isinstance(args[1], (int, float)) and not kwargs and args[0].is_floating_point():
            reciprocal = (torch.tensor(1.0, dtype=args[0].dtype) / args[1]).item()  # in the tensor's precision
            multiply = torch.Tensor.mul_ if func in (torch.Tensor.div_, torch.Tensor.__itruediv__) else torch.mul
            return multiply(args[0], reciprocal)
        out = super().__torch_function__(func, types, args, kwargs)
        if _moves_to_a_device(func, args, kwargs) and isinstance(out, torch.Tensor):
            return out.as_subclass(torch.Tensor)
        return out


def test_the_emulated_gpu_divides_by_the_reciprocal_and_moving_leaves_it(images):
    levels = torch.arange(256, dtype=torch.uint8).as_subclass(OnGpu)
    on_gpu = levels.float() / 255
    assert isinstance(on_gpu, OnGpu) and torch.equal(on_gpu, torch.arange(256.0) * (torch.tensor(1.0) / 255))
    assert not torch.equal(on_gpu, torch.arange(256.0) / 255)  # the last-bit difference exists: the test can fail
    assert type(levels.to("cpu")) is torch.Tensor and type(levels.cpu()) is torch.Tensor


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_gpu_arithmetic_gives_the_cpus_images_bit_for_bit(images, name):
    # Before issue 16, shot noise computed its Poisson rates on the images' device: on a GPU, x * (1 / 255)
    # made some rates differ in the last bit, the rejection sampler took other numbers of draws, and the
    # images drifted apart (up to 44 levels on an H200).
    both = torch.cat([images, grey(128, 8), grey(37, 8)])
    for severity in SEVERITIES:
        on_cpu = corrupt(both, name, severity, seeded(5))
        on_gpu = corrupt(both.as_subclass(OnGpu), name, severity, seeded(5))
        assert torch.equal(on_gpu.as_subclass(torch.Tensor), on_cpu), (name, severity)


def test_unit_levels_are_the_cpus_division_in_either_precision():
    from resattn.corruptions import _unit

    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(_unit(levels), levels.float() / 255)
    assert torch.equal(_unit(levels, torch.float64), levels.double() / 255)

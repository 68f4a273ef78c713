import copy

import pytest
import torch
import torch.nn.functional as F

from resattn.attention import CBAM
from resattn.blocks import ResidualBlock, ZeroPadSkip, zero_pad_skip

torch.manual_seed(0)


def cbam_by_formula(m: CBAM, v: torch.Tensor) -> torch.Tensor:
    """CBAM written out from the paper with the module's own weights."""
    w1, w2 = m.ca.mlp[0].weight, m.ca.mlp[2].weight

    def mlp(d):
        return F.conv2d(F.relu(F.conv2d(d, w1)), w2)

    alpha_c = torch.sigmoid(mlp(v.mean((2, 3), keepdim=True)) + mlp(v.amax((2, 3), keepdim=True)))
    v1 = alpha_c * v
    k = m.sa.conv.weight.shape[-1]
    desc = torch.cat([v1.mean(1, keepdim=True), v1.amax(1, keepdim=True)], 1)
    alpha_s = torch.sigmoid(F.conv2d(desc, m.sa.conv.weight, padding=k // 2))
    return alpha_s * v1


def randomise(block: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so eval mode tests more than identity BNs."""
    for mod in block.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.2)


@pytest.mark.parametrize("kernel", [3, 7])
def test_cbam_matches_formula(kernel):
    m = CBAM(32, reduction=4, spatial_kernel=kernel)
    v = torch.randn(3, 32, 8, 8)
    torch.testing.assert_close(m(v), cbam_by_formula(m, v))
    masks = m.masks(v)
    assert masks["channel"].shape == (3, 32, 1, 1) and masks["spatial"].shape == (3, 1, 8, 8)
    torch.testing.assert_close(masks["spatial"] * (masks["channel"] * v), m(v))


def test_cbam_hidden_width_has_a_floor_of_four():
    assert CBAM(16, reduction=16).ca.mlp[0].out_channels == 4
    assert CBAM(128, reduction=16).ca.mlp[0].out_channels == 8


def expected(block: ResidualBlock, x: torch.Tensor, placement: str, lam: torch.Tensor | None) -> torch.Tensor:
    """The block's output by its formula; lam None is the plain gate, a (C,) lam mixes channel by channel."""

    def gate(v):
        if lam is None:
            return cbam_by_formula(block.attn, v)
        mix = lam.reshape(1, -1, 1, 1) if lam.ndim else lam
        return (1 - mix) * v + mix * cbam_by_formula(block.attn, v)

    skip = block.skip(x)
    if placement == "none":
        return F.relu(skip + block.F(x))
    if placement == "inside":
        return F.relu(skip + gate(block.F(x)))
    if placement == "post_add":
        return gate(F.relu(skip + block.F(x)))
    if placement == "skip":
        return F.relu(gate(skip) + block.F(x))
    return F.relu(skip + block.F(gate(x)))


@pytest.mark.parametrize("placement", ["none", "inside", "post_add", "pre", "skip"])
@pytest.mark.parametrize("gate", ["plain", "scalar", "channel"])
@pytest.mark.parametrize("stride,in_ch,out_ch", [(1, 16, 16), (2, 16, 32)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_block_matches_its_formula(placement, gate, stride, in_ch, out_ch, mode):
    block = ResidualBlock(
        in_ch,
        out_ch,
        stride,
        placement=placement,
        controlled=gate != "plain",
        lam_init=0.3,
        lam_shape="channel" if gate == "channel" else "scalar",
    )
    randomise(block)
    if gate == "channel" and block.controlled:  # a different λ in every channel, so a wrong broadcast shows
        block.lam_logit.data.normal_(0, 1)
    getattr(block, mode)()
    twin = copy.deepcopy(block)  # in train mode each pass updates BN statistics: the formula gets its own copy
    x = torch.randn(4, in_ch, 8, 8)
    y = block(x)
    assert y.shape == (4, out_ch, 8 // stride, 8 // stride)
    lam = torch.sigmoid(twin.lam_logit.detach()) if twin.controlled else None
    if gate == "scalar" and placement != "none":
        assert lam.item() == pytest.approx(0.3)
    torch.testing.assert_close(y, expected(twin, x, placement, lam))


def test_zero_pad_shortcut_subsamples_and_pads_without_parameters():
    x = torch.randn(2, 8, 8, 8)
    skip = zero_pad_skip(8, 16, 2)
    assert isinstance(skip, ZeroPadSkip) and not list(skip.parameters())
    y = skip(x)
    assert y.shape == (2, 16, 4, 4)
    torch.testing.assert_close(y[:, :8], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 8:]) == 0
    assert isinstance(zero_pad_skip(8, 8, 1), torch.nn.Identity)


@pytest.mark.parametrize("placement", ["inside", "skip"])
def test_block_with_zero_pad_shortcut_matches_its_formula(placement):
    block = ResidualBlock(8, 16, 2, placement=placement, skip_layer=zero_pad_skip).eval()
    randomise(block)
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(block(x), expected(block, x, placement, None))


def test_attention_sees_input_channels_in_p3_and_output_channels_in_p1_p2():
    assert ResidualBlock(16, 32, 2, placement="pre").attn.ca.mlp[0].in_channels == 16
    assert ResidualBlock(16, 32, 2, placement="inside").attn.ca.mlp[0].in_channels == 32
    assert ResidualBlock(16, 32, 2, placement="post_add").attn.ca.mlp[0].in_channels == 32
    assert ResidualBlock(16, 32, 2, placement="skip").attn.ca.mlp[0].in_channels == 32
    assert ResidualBlock(16, 32, 2, placement="none").attn is None


def test_skip_is_identity_unless_shape_changes():
    assert isinstance(ResidualBlock(16, 16, 1).skip, torch.nn.Identity)
    assert isinstance(ResidualBlock(16, 32, 1).skip[0], torch.nn.Conv2d)
    assert ResidualBlock(16, 16, 2).skip[0].stride == (2, 2)


@pytest.mark.parametrize("lam_init", [0.0, 0.01, 0.1, 0.5, 0.9, 1.0])
def test_lambda_starts_at_lam_init(lam_init):
    block = ResidualBlock(8, 8, placement="pre", controlled=True, lam_init=lam_init)
    clamped = min(max(lam_init, 1e-4), 1 - 1e-4)
    assert block.lam.item() == pytest.approx(clamped, abs=1e-6)


def test_learnable_lambda_gets_a_gradient_and_moves():
    torch.manual_seed(1)
    block = ResidualBlock(8, 8, placement="pre", controlled=True, lam_init=0.1, lam_learnable=True)
    assert any(p is block.lam_logit for p in block.parameters())
    # Adam moves lam_logit by about lr a step whatever the gradient's size, so moving proves the gradient flows.
    opt = torch.optim.Adam([block.lam_logit], lr=0.05)
    x, target = torch.randn(8, 8, 6, 6), torch.randn(8, 8, 6, 6)
    start = block.lam.item()
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(block(x), target).backward()
        assert block.lam_logit.grad is not None and block.lam_logit.grad.abs().item() > 0
        opt.step()
    assert abs(block.lam.item() - start) > 1e-4


def test_fixed_lambda_is_a_buffer_and_does_not_move():
    block = ResidualBlock(8, 8, placement="pre", controlled=True, lam_init=0.3, lam_learnable=False)
    assert all(p is not block.lam_logit for p in block.parameters())
    assert "lam_logit" in dict(block.named_buffers())
    opt = torch.optim.SGD(block.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    for _ in range(3):
        opt.zero_grad()
        block(torch.randn(4, 8, 6, 6)).square().mean().backward()
        opt.step()
    assert block.lam.item() == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("placement,channels", [("pre", 8), ("inside", 16), ("post_add", 16), ("skip", 16)])
@pytest.mark.parametrize("learnable", [True, False])
def test_channel_lambda_has_one_entry_per_gated_channel_all_at_lam_init(placement, channels, learnable):
    block = ResidualBlock(
        8, 16, 2, placement=placement, controlled=True, lam_init=0.2, lam_learnable=learnable, lam_shape="channel"
    )
    assert block.lam.shape == (channels,)
    torch.testing.assert_close(block.lam, torch.full((channels,), 0.2))
    assert any(p is block.lam_logit for p in block.parameters()) == learnable


def test_each_channel_lambda_gets_its_own_gradient():
    torch.manual_seed(2)
    block = ResidualBlock(8, 8, placement="inside", controlled=True, lam_init=0.1, lam_shape="channel")
    F.mse_loss(block(torch.randn(8, 8, 6, 6)), torch.randn(8, 8, 6, 6)).backward()
    grad = block.lam_logit.grad
    assert grad.shape == (8,) and grad.abs().min() > 0 and grad.std() > 1e-3 * grad.abs().mean()


def test_bad_block_arguments_are_refused():
    with pytest.raises(ValueError, match="placement"):
        ResidualBlock(8, 8, placement="after")
    with pytest.raises(ValueError, match="lam_init"):
        ResidualBlock(8, 8, controlled=True, lam_init=1.5)
    with pytest.raises(ValueError, match="lam_shape"):
        ResidualBlock(8, 8, controlled=True, lam_shape="vector")
    with pytest.raises(ValueError, match="spatial_kernel"):
        CBAM(8, spatial_kernel=5)

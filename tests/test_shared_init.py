"""Shared initial weights across arms (issue 17, part 4): for one seed, every module two arms both have starts
from the same weights whatever the placement, attention and gate; the attention draws from its own stream."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import ROOT
from resattn import CifarResNet, SimpleCNN

ARMS = ["baseline", "p1", "p2", "p3", "p3_controlled", "p4"]


def common(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every state_dict entry outside the attention modules and λ: what all arms have."""
    return {k: v for k, v in model.state_dict().items() if ".attn." not in k and "lam_logit" not in k}


def assert_same(a: dict, b: dict, what: str) -> None:
    assert list(a) == list(b), what
    for k in a:
        assert torch.equal(a[k], b[k]), (what, k)


def simplecnn(seed: int, pattern: str, attention: str = "cbam", **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return SimpleCNN(pattern=pattern, attention=attention, width=0.25, **kw)


def resnet(seed: int, pattern: str, attention: str = "cbam", shortcut: str = "A") -> torch.nn.Module:
    torch.manual_seed(seed)
    return CifarResNet(20, pattern, attention, shortcut=shortcut, width=0.25)


@pytest.mark.parametrize(
    "build",
    [simplecnn, resnet, lambda s, p, a="cbam": resnet(s, p, a, shortcut="B")],
    ids=["simplecnn", "resnet_A", "resnet_B"],
)
def test_common_modules_start_equal_whatever_the_arm(build):
    ref = common(build(0, "baseline"))
    assert any("F.conv1" in k for k in ref) and any("head" in k for k in ref)
    for pattern in ARMS:
        for attention in ["cbam", "se", "eca"]:
            assert_same(common(build(0, pattern, attention)), ref, (pattern, attention))
    # and they differ between seeds
    other = common(build(1, "baseline"))
    assert all(not torch.equal(ref[k], other[k]) for k in ref if k.endswith("conv1.weight"))


def test_gate_and_lambda_shape_do_not_move_the_common_weights():
    ref = common(simplecnn(5, "p1"))
    assert_same(common(simplecnn(5, "p1", controlled=True, lam_shape="channel")), ref, "channel λ")
    assert_same(common(simplecnn(5, "p3_controlled", lam_init=0.5, lam_learnable=False)), ref, "fixed λ")


def test_attention_draws_its_own_stream():
    """The attention's weights are fixed by the seed, differ between seeds and between blocks, and are not a
    copy of the numbers the branch drew."""
    a, b, c = simplecnn(0, "p1", "se"), simplecnn(0, "p1", "se"), simplecnn(1, "p1", "se")
    wa, wb, wc = (
        m.block1.attn.fc1.weight if hasattr(m.block1.attn, "fc1") else next(m.block1.attn.parameters())
        for m in (a, b, c)
    )
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    r = resnet(0, "p3")
    w0, w1 = (next(r.stage1.get_submodule(n).attn.parameters()) for n in ("block0", "block1"))
    assert w0.shape == w1.shape and not torch.equal(w0, w1)
    # the main stream after the construction is the same in every arm (training draws then match too)
    torch.manual_seed(0)
    SimpleCNN("baseline", width=0.25)
    after_baseline = torch.rand(3)
    torch.manual_seed(0)
    SimpleCNN("p2", width=0.25)
    after_p2 = torch.rand(3)
    assert torch.equal(after_baseline, after_p2)


def test_the_training_run_builds_arms_with_shared_weights():
    """As engine.train builds them: seed_everything(cfg.seed), the data, then build_model."""
    from resattn import data, engine

    def built(*overrides):
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(
                "config",
                overrides=["data=synthetic", "model.width=0.25", "data.train_size=64", "data.test_size=32", *overrides],
            )
        engine.seed_everything(cfg.seed)
        ds = data.load(cfg.data)
        return common(engine.build_model(cfg, len(ds.classes)))

    for model in ["simplecnn", "resnet"]:
        ref = built(f"model={model}", "pattern=baseline")
        for pattern in ["p1", "p3", "p3_controlled"]:
            assert_same(built(f"model={model}", f"pattern={pattern}"), ref, (model, pattern))
        assert_same(built(f"model={model}", "pattern=p4", "attention=se"), ref, (model, "p4 se"))
        other = built(f"model={model}", "pattern=baseline", "seed=1")
        assert not torch.equal(ref["stem.0.weight"], other["stem.0.weight"])

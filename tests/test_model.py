import pytest
import torch

from resattn import PATTERNS, SimpleCNN


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_every_pattern_builds_and_classifies(pattern):
    m = SimpleCNN(pattern=pattern, num_classes=7, width=0.25)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert m.block1.placement == PATTERNS[pattern][0]
    assert set(m.lambdas()) == ({"block1", "block2"} if pattern == "p3_controlled" else set())


def test_default_width_has_the_notebook_channels():
    m = SimpleCNN()
    assert [m.stem[0].out_channels, m.conv1[0].out_channels, m.block2.F.conv2.out_channels, m.head[2].in_features] \
        == [32, 64, 128, 128]
    assert m.block2.F.conv1.stride == (2, 2)


def test_modules_are_registered_in_forward_order():
    names = [n for n, _ in SimpleCNN().named_children()]
    assert names == ["stem", "conv1", "block1", "block2", "conv2", "head"]
    assert [n for n, _ in SimpleCNN().block1.named_children()][:3] == ["attn", "F", "skip"]


def test_controlled_flag_overrides_the_pattern_gate():
    assert SimpleCNN("p1", controlled=True, width=0.25).block1.controlled
    assert not SimpleCNN("p3_controlled", controlled=False, width=0.25).block1.controlled
    assert not SimpleCNN("baseline", controlled=True, width=0.25).block1.controlled


def test_fixed_lambda_model_has_no_lambda_parameter():
    m = SimpleCNN("p3_controlled", lam_init=0.3, lam_learnable=False, width=0.25)
    assert not any("lam_logit" in n for n, _ in m.named_parameters())
    assert m.lambdas()["block2"].item() == pytest.approx(0.3, abs=1e-6)


def test_unknown_pattern_is_refused():
    with pytest.raises(ValueError, match="pattern must be one of"):
        SimpleCNN("p4")


def test_loads_the_notebooks_state_dict_names():
    torch.manual_seed(0)
    source = SimpleCNN("p3_controlled")
    notebook_sd = {k.replace("block1.", "p3_1.").replace("block2.", "p3_2."): v for k, v in source.state_dict().items()}
    target = SimpleCNN("p3_controlled")
    target.load_state_dict(notebook_sd)  # strict: every key found under its new name
    source.eval(), target.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source(x), target(x))

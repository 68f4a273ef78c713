"""Command-line keys that no config has: one line naming the closest real key (in-process, Hydra's compose API)."""

import pytest

from resattn.config import ConfigError
from resattn.keys import check_keys


@pytest.mark.parametrize(
    "args, message",
    [
        (["pattern.laminit=0.2"], "unknown key pattern.laminit; did you mean pattern.lam_init?"),
        (["+pattern.laminit=0.2"], "unknown key pattern.laminit; did you mean pattern.lam_init?"),
        (["-m", "trainer.epoch=3,4"], "unknown key trainer.epoch; did you mean trainer.epochs?"),
        (
            ["attention.bias=false"],
            "unknown key attention.bias for attention=cbam; se has it (attention=se attention.bias=...)",
        ),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_real_key(args, message):
    with pytest.raises(ConfigError) as err:
        check_keys(args)
    assert str(err.value) == message


def test_real_keys_pass_and_adding_a_real_key_sets_it():
    args = [
        "-m",
        "experiment=resnet_placements",
        "model.depth=32",
        "attention=cbam,se",
        "attention.bias=false",
        "hydra.launcher.n_jobs=2",
        "+hydra.launcher.additional_parameters.mail-type=END",
        "data=folder",
        "data.root=/x",
    ]
    assert check_keys(args) == args  # preset keys, a key of a swept option, Hydra's own keys
    # Hydra refuses to add a key that exists; what the user means is to set it
    assert check_keys(["+pattern.lam_init=0.3"]) == ["++pattern.lam_init=0.3"]

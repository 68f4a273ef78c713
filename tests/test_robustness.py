"""Evaluation under corruptions: names and severities from the config, accuracies, their summary."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from resattn import data
from resattn.config import ConfigError, check_eval_config, resolve_names, resolve_severities
from resattn.corruptions import CORRUPTIONS, FAMILIES, corrupt
from resattn.robustness import corruption_seed, evaluate_corruptions, summarise

GOOD = {"corruptions": "all", "severities": [1, 2, 3, 4, 5], "corruption_test_size": None, "corruption_every": None}


def test_names_expand_all_families_and_lists_in_order_without_repeats():
    assert resolve_names(None) == []
    assert resolve_names("all") == list(CORRUPTIONS)
    assert resolve_names("noise") == FAMILIES["noise"]
    assert resolve_names(OmegaConf.create(["contrast", "blur", "contrast", "digital"])) == [
        "contrast",
        "gaussian_blur",
        "brightness",
        "saturate",
        "pixelate",
        "jpeg_compression",
    ]


@pytest.mark.parametrize("bad,shown", [("fog", "'fog'"), (["noise", "Fog"], "'Fog'"), (3, "3"), (["contrast", 1], "1")])
def test_an_unknown_corruption_is_one_line_naming_the_key_and_the_allowed_names(bad, shown):
    with pytest.raises(ConfigError) as err:
        check_eval_config(OmegaConf.create({**GOOD, "corruptions": bad}))
    message = str(err.value)
    assert message.startswith("eval.corruptions must be") and message.endswith(f", got {shown}") and "\n" not in message
    assert all(name in message for name in [*CORRUPTIONS, *FAMILIES, "all"])


@pytest.mark.parametrize(
    "key,bad,allowed",
    [
        ("severities", [0, 1], "a list of integers in 1..5"),
        ("severities", [5, 6], "a list of integers in 1..5"),
        ("severities", 6, "a list of integers in 1..5"),
        ("severities", [], "a list of integers in 1..5"),
        ("severities", [True], "a list of integers in 1..5"),
        ("corruption_test_size", -5, "null or an integer >= 1"),
        ("corruption_test_size", 0, "null or an integer >= 1"),
        ("corruption_test_size", 2.5, "null or an integer >= 1"),
        ("corruption_every", 0, "null or an integer >= 1"),
        ("corruption_every", "end", "null or an integer >= 1"),
    ],
)
def test_each_bad_eval_value_is_one_line_naming_its_key(key, bad, allowed):
    with pytest.raises(ConfigError) as err:
        check_eval_config(OmegaConf.create({**GOOD, key: bad}))
    assert str(err.value) == f"eval.{key} must be {allowed}, got {bad!r}"


def test_good_eval_values_pass():
    default = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "eval" / "default.yaml")
    check_eval_config(default)
    assert resolve_names(default.corruptions) == [] and resolve_severities(default.severities) == [1, 2, 3, 4, 5]
    check_eval_config(OmegaConf.create(GOOD))
    check_eval_config(
        OmegaConf.create({**GOOD, "corruptions": None, "corruption_test_size": 500, "corruption_every": 2})
    )
    assert resolve_severities(OmegaConf.create([3, 1, 3])) == [3, 1] and resolve_severities(4) == [4]


@pytest.fixture(scope="module")
def setup():
    """A random linear classifier on the pixels (every pixel moves its logits, so noise moves its predictions),
    and labels that are its own predictions on the clean images: clean accuracy is 1, any drop is the corruption's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(60, 3, 8, 8, generator=g), size=32, mode="bilinear")
    images = (images * 255).round().to(torch.uint8)
    mean, std = data.channel_stats(images)

    def loader(batch_size: int, labels=None) -> data.Loader:
        return data.Loader(
            data.Split(images, torch.zeros(60, dtype=torch.long) if labels is None else labels),
            batch_size,
            mean,
            std,
            "cpu",
        )

    with torch.no_grad():
        labels = model(loader(60).normalise(images)).argmax(1)
    return model, lambda batch_size: loader(batch_size, labels)


def test_accuracy_per_name_and_severity_is_that_of_the_seeded_corrupted_images(setup):
    model, make_loader = setup
    loader = make_loader(16)
    (acc,) = evaluate_corruptions(model, loader, ["gaussian_noise", "contrast"], [1, 5], seed=3)
    assert list(acc) == ["gaussian_noise", "contrast"] and all(list(by_sev) == [1, 5] for by_sev in acc.values())
    for name, by_severity in acc.items():
        for severity, value in by_severity.items():
            generator = torch.Generator().manual_seed(corruption_seed(3, name, severity))
            images = corrupt(loader.images, name, severity, generator)
            with torch.no_grad():
                expected = (model(loader.normalise(images)).argmax(1) == loader.labels).double().mean().item()
            assert value == pytest.approx(expected)
    assert min(min(by_sev.values()) for by_sev in acc.values()) < 1  # the corruption reached the model
    assert torch.equal(loader.images, make_loader(16).images)  # and the loader's own images are untouched


def test_the_same_seed_gives_the_same_accuracies_whatever_the_batch_size_and_other_names(setup):
    model, make_loader = setup
    (first,) = evaluate_corruptions(model, make_loader(16), ["shot_noise", "impulse_noise"], [2, 4], seed=1)
    (alone,) = evaluate_corruptions(model, make_loader(60), ["impulse_noise"], [2, 4], seed=1)
    assert alone["impulse_noise"] == first["impulse_noise"]
    assert evaluate_corruptions(model, make_loader(16), ["shot_noise", "impulse_noise"], [2, 4], seed=1) == [first]
    assert evaluate_corruptions(model, make_loader(16), ["shot_noise", "impulse_noise"], [2, 4], seed=2) != [first]


def test_summarise_averages_over_severities_and_over_everything():
    per_name, robust = summarise({"gaussian_noise": {1: 0.5, 2: 0.7}, "contrast": {1: 0.2, 2: 0.4, 3: 0.0}})
    assert per_name == pytest.approx({"gaussian_noise": 0.6, "contrast": 0.2})
    assert robust == pytest.approx((0.5 + 0.7 + 0.2 + 0.4 + 0.0) / 5)

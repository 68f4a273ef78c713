from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from resattn import data
from resattn.attention import ATTENTIONS
from resattn.build import build_model
from resattn.config import ConfigError, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PATTERNS = sorted(p.stem for p in (CONFIGS / "pattern").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml"))


def make(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_is_p3_controlled_on_cifar10():
    cfg = make()
    assert (cfg.pattern.name, cfg.pattern.lam_init, cfg.pattern.lam_learnable) == ("p3_controlled", 0.1, True)
    assert cfg.data.name == "cifar10" and cfg.data.root == "data" and cfg.data.download is True


def test_all_six_patterns_exist():
    assert PATTERNS == ["baseline", "p1", "p2", "p3", "p3_controlled", "p4"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_composes_and_builds(pattern):
    cfg = make(f"pattern={pattern}", "model.width=0.25")
    validate(cfg)
    model = build_model(cfg, num_classes=10)
    assert model.pattern == pattern == cfg.pattern.name
    assert model.block1.controlled == (pattern == "p3_controlled")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", DATASETS)
def test_data_config_composes_and_builds(name, tmp_path):
    overrides = [f"data={name}"]
    if name == "cifar10":  # offline and no copy here: building must fail with a clear message
        overrides += [f"data.root={tmp_path}", "data.download=false"]
    if name == "folder":
        for split in ("train", "test"):
            for c in ("a", "b"):
                (tmp_path / split / c).mkdir(parents=True)
                from PIL import Image

                for i in range(3):
                    Image.new("RGB", (40, 24), (i * 50, 0, 200)).save(tmp_path / split / c / f"{i}.png")
        overrides += [f"data.root={tmp_path}"]
    if name == "synthetic":
        overrides += ["data.train_size=64", "data.test_size=32"]
    cfg = make(*overrides)
    validate(cfg)
    if name == "cifar10":
        with pytest.raises(ConfigError, match="data.root"):
            data.load(cfg.data)
        return
    ds = data.load(cfg.data)
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape[1:] == (3, 32, 32)
    assert len(ds.train.labels) == (6 if name == "folder" else 64)


# attention=timm and custom name their module: timm's se, and resattn's SE as if it were a researcher's own
OPEN = {
    "timm": ("attention.type=se", "timm.se", "SEModule"),
    "custom": ("attention._target_=resattn.attention.SE", "resattn.attention.SE", "SE"),
}


@pytest.mark.parametrize("model", ["simplecnn", "resnet"])
@pytest.mark.parametrize("attention", sorted(p.stem for p in (CONFIGS / "attention").glob("*.yaml")))
def test_attention_and_model_compose_and_build(attention, model):
    if attention in OPEN:
        which, name, cls = OPEN[attention]
        cfg = make(f"attention={attention}", which, f"model={model}", "model.width=0.25", "pattern=p1")
    else:
        name, cls = attention, ATTENTIONS[attention].__name__
        cfg = make(f"attention={attention}", f"model={model}", "model.width=0.25", "pattern=p1")
    validate(cfg)
    net = build_model(cfg, num_classes=10)
    assert cfg.attention.name == name and cfg.model.name == model
    assert len(net.blocks) == (9 if model == "resnet" else 2)
    assert all(type(b.attn).__name__ == cls for b in net.blocks.values())


def test_resnet_brings_its_training_recipe_and_the_command_line_wins():
    simple, resnet = make(), make("model=resnet")
    assert (simple.trainer.batch_size, simple.optim.lr, simple.optim.schedule) == (256, 0.2, "onecycle")
    assert (resnet.trainer.epochs, resnet.trainer.batch_size) == (164, 128)
    assert (resnet.optim.lr, resnet.optim.weight_decay, resnet.optim.schedule, resnet.optim.label_smoothing) == (
        0.1,
        1e-4,
        "cosine",
        0.0,
    )
    assert resnet.trainer.eval_batch_size == simple.trainer.eval_batch_size  # keys it does not set stay
    for overrides in (
        ["trainer.batch_size=64", "model=resnet", "optim.lr=0.05"],
        ["model=resnet", "trainer.batch_size=64", "optim.lr=0.05"],
        ["experiment=resnet_placements", "trainer.batch_size=64", "optim.lr=0.05"],
    ):
        cfg = make(*overrides)
        assert (cfg.model.name, cfg.trainer.batch_size, cfg.optim.lr, cfg.trainer.epochs) == ("resnet", 64, 0.05, 164)


def test_presets_sweep_the_grid():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        grid = compose("config", overrides=["experiment=placement_grid"], return_hydra_config=True)
        resnet = compose("config", overrides=["experiment=resnet_placements"], return_hydra_config=True)
    assert grid.hydra.sweeper.params == {"attention": "cbam,se,eca", "pattern": ",".join(PATTERNS), "seed": "0,1,2"}
    assert grid.model.name == "simplecnn"
    assert resnet.hydra.sweeper.params == {"pattern": ",".join(PATTERNS), "seed": "0,1,2"}
    assert (resnet.model.name, resnet.model.depth, resnet.attention.name) == ("resnet", 20, "se")


def test_moved_keys_name_their_new_place(capsys):
    from resattn.job import check_choices

    with pytest.raises(SystemExit) as exit_:
        check_choices(["model=resnet", "pattern.reduction=8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attention.reduction" in err and err.startswith("error: pattern.reduction")
    with pytest.raises(SystemExit):
        check_choices(["+pattern.spatial_kernel=3"])
    assert "attention.spatial_kernel" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check_choices(["trainer.time_limit=60"])
    assert "trainer.deadline" in capsys.readouterr().err


def test_unknown_choices_read_as_english(capsys):
    from resattn.job import check_choices

    for arg, phrase in (
        ("attention=foo", "is not an attention config"),
        ("experiment=foo", "is not an experiment "),
        ("pattern=foo", "is not a pattern config"),
    ):
        with pytest.raises(SystemExit) as exit_:
            check_choices([arg])
        assert exit_.value.code == 2 and phrase in capsys.readouterr().err


def test_choices_on_the_search_path_are_known(tmp_path, capsys):
    """Options of a group kept outside configs/ (tuned rates of another study) are found where Hydra finds
    them, on hydra.searchpath or in --config-dir; an empty group says where its options come from."""
    from resattn.job import check_choices

    (tmp_path / "tuned_lr").mkdir()
    (tmp_path / "tuned_lr" / "p1.yaml").write_text("# @package _global_\n")
    with pytest.raises(SystemExit) as exit_:
        check_choices(["-m", "experiment=compare_tuned", "tuned_lr=p1"])
    assert exit_.value.code == 2 and "choose one of none yet (configs/tuned_lr/README.md)" in capsys.readouterr().err
    check_choices(["-m", "experiment=compare_tuned", "tuned_lr=p1", f"hydra.searchpath=[file://{tmp_path}]"])
    check_choices(["-m", "--config-dir", str(tmp_path), "tuned_lr=p1"])
    with pytest.raises(SystemExit):
        check_choices(["-m", "tuned_lr=p1,p3", f"hydra.searchpath=['file://{tmp_path}']"])
    assert "tuned_lr=p3 is not a tuned_lr config; choose one of p1" in capsys.readouterr().err
    check_choices(["-m", "tuned_lr=p3", "hydra.searchpath=[pkg://somewhere.configs]"])  # only Hydra can list it


@pytest.mark.parametrize("args", [["attention=se,eca"], ["pattern=p1", "seed=0,1"], ["seed=range(3)"]])
def test_a_list_of_values_without_multirun_is_one_line(args, capsys):
    from resattn.job import check_choices

    with pytest.raises(SystemExit) as exit_:
        check_choices(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "a list of values needs -m (multirun)" in err


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "attention=se,eca"],
        ["eval.corruptions=[noise,blur]"],
        ["experiment=compare_patterns", "seed=0,1"],
        ["hydra.mode=MULTIRUN", "seed=0,1"],
    ],
)
def test_lists_that_need_no_multirun_flag_pass(args):
    from resattn.job import check_choices

    check_choices(args)


@pytest.mark.parametrize(
    "overrides,inert",
    [
        (["pattern=baseline", "pattern.lam_init=0.3"], ["pattern.lam_init"]),
        (
            ["pattern=p1", "pattern.lam_learnable=false", "optim.lam_lr_scale=10"],
            ["pattern.lam_learnable", "optim.lam_lr_scale"],
        ),
        (["pattern=p1", "pattern.controlled=true", "pattern.lam_init=0.3"], []),
        (["pattern=p3_controlled", "pattern.lam_init=0.3"], []),
        (["pattern=baseline", "pattern.controlled=true", "pattern.lam_shape=channel"], ["pattern.lam_shape"]),
    ],
)
def test_lambda_keys_without_a_controlled_gate_are_named(overrides, inert):
    from resattn.config import inert_keys, inert_keys_message

    cfg = make(*overrides)
    assert inert_keys(cfg, overrides) == inert
    if inert:
        assert "\n" not in inert_keys_message(cfg, inert) and "controlled gate" in inert_keys_message(cfg, inert)


@pytest.mark.parametrize(
    "override,key",
    [
        ("pattern.lam_init=1.5", "pattern.lam_init"),
        ("pattern.lam_init=-0.1", "pattern.lam_init"),
        ("pattern.lam_init=abc", "pattern.lam_init"),
        ("attention.spatial_kernel=5", "attention.spatial_kernel"),
        ("attention.reduction=0", "attention.reduction"),
        ("attention=se attention.reduction=2.5", "attention.reduction"),
        ("attention=se attention.bias=maybe", "attention.bias"),
        ("attention=eca attention.gamma=0", "attention.gamma"),
        ("attention=eca attention.gamma=-1", "attention.gamma"),
        ("attention=eca attention.beta=nan", "attention.beta"),
        ("attention.name=se", "attention.name"),
        ("pattern.lam_shape=vector", "pattern.lam_shape"),
        ("model=resnet model.depth=21", "model.depth"),
        ("model=resnet model.depth=20.0", "model.depth"),
        ("model=resnet model.shortcut=C", "model.shortcut"),
        ("model=resnet model.width=0", "model.width"),
        ("model.name=vgg", "model.name"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("optim.schedule=linear", "optim.schedule"),
        ("trainer.precision=fp16", "trainer.precision"),
        ("model.width=0", "model.width"),
        ("trainer.resume=true", "trainer.resume"),
        ("trainer.batch_size=64.0", "trainer.batch_size"),
        ("pattern.placement=inside", "pattern.placement"),
        ("seed=-1", "seed"),
        ("seed=abc", "seed"),
        ("optim.warmup_frac=1", "optim.warmup_frac"),
        ("optim.warmup_frac=0", "optim.warmup_frac"),
        ("optim.label_smoothing=1.5", "optim.label_smoothing"),
        ("model.width=inf", "model.width"),
        ("data=folder", "data.root"),
        ("data=synthetic data.train_size=null", "data.train_size"),
        ("trainer.num_threads=0", "trainer.num_threads"),
        ("tracking.attention_maps_every=-1", "tracking.attention_maps_every"),
        ("optim.lam_lr_scale=0", "optim.lam_lr_scale"),
        ("optim.momentum=1.5", "optim.momentum"),
        ("optim.momentum=1", "optim.momentum"),
        ("optim.momentum=-0.1", "optim.momentum"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay"),
        ("optim.weight_decay=inf", "optim.weight_decay"),
        ("eval.corruptions=fog", "eval.corruptions"),
        ("eval.corruptions=[noise,snow]", "eval.corruptions"),
        ("eval.severities=[0,1]", "eval.severities"),
        ("eval.severities=[6]", "eval.severities"),
        ("eval.corruption_test_size=-5", "eval.corruption_test_size"),
        ("eval.corruption_every=0", "eval.corruption_every"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        validate(make(*override.split()))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "preset,params,fixed",
    [
        ("width_sweep", {"model.width": "0.25,0.5,1.0", "pattern": "baseline,p3,p3_controlled", "seed": "0,1,2"}, {}),
        ("lr_stress", {"optim.lr": "0.1,0.4,1.6", "pattern": "baseline,p1,p3,p3_controlled", "seed": "0,1,2"}, {}),
        ("robustness", {"pattern": "baseline,p1,p2,p3,p3_controlled,p4", "seed": "0,1,2"}, {"eval.corruptions": "all"}),
        (
            "lam_convergence",
            {"pattern.lam_init": "0.01,0.1,0.5,0.9", "optim.lam_lr_scale": "1,10,100", "seed": "0,1"},
            {"pattern.name": "p3_controlled"},
        ),
        (
            "cpu_study",
            {"seed": "0,1,2", "pattern": "baseline,p1,p2,p3,p3_controlled,p4"},
            {
                "data.name": "folder",
                "model.width": 0.5,
                "data.train_size": 10000,
                "trainer.epochs": 15,
                "eval.corruption_test_size": 1000,
            },
        ),
    ],
)
def test_claim_presets_sweep_what_they_say(preset, params, fixed):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}", "data.root=/images"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == params
    for key, value in fixed.items():
        assert OmegaConf.select(cfg, key) == value, key
    validate(cfg)  # every preset is a valid config as it stands (cpu_study with its data.root)

"""data.val_size (issue 17, part 1): a class-balanced part of the training split, fixed by data.subset_seed,
held out of training; data.train_size subsets what remains."""

import pytest
import torch
from omegaconf import OmegaConf

from resattn import data
from resattn.config import validate
from resattn.data import Dataset, Split
from resattn.errors import ConfigError


def fake_cifar(cfg) -> Dataset:
    """1,000 training and 200 test images, 10 classes; each image's first pixel holds its index (mod 256) and the
    second its index // 256, so a split's images can be traced back."""

    def split(n):
        idx = torch.arange(n)
        images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = idx % 256, idx // 256
        labels = torch.randperm(n, generator=torch.Generator().manual_seed(7)) % 10
        return Split(images, labels)

    return Dataset(split(1000), split(200), [f"c{i}" for i in range(10)])


def ids(s: Split) -> set[int]:
    return set((s.images[:, 0, 0, 0].long() + 256 * s.images[:, 0, 0, 1].long()).tolist())


def cifar_cfg(**kw):
    return OmegaConf.create(
        {"name": "cifar10", "train_size": None, "test_size": None, "val_size": 0, "subset_seed": 0, **kw}
    )


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(data, "cifar10", fake_cifar)


def test_validation_split_is_held_out_balanced_and_fixed_by_subset_seed(fake):
    ds = data.load(cifar_cfg(val_size=200))
    assert len(ds.val.labels) == 200 and len(ds.train.labels) == 800 and len(ds.test.labels) == 200
    assert torch.bincount(ds.val.labels, minlength=10).tolist() == [20] * 10
    assert not ids(ds.val) & ids(ds.train) and ids(ds.val) | ids(ds.train) == set(range(1000))
    again, other = data.load(cifar_cfg(val_size=200)), data.load(cifar_cfg(val_size=200, subset_seed=1))
    assert ids(again.val) == ids(ds.val) and ids(other.val) != ids(ds.val)
    # the labels travel with their images
    ref = fake_cifar(None).train
    val_ids = ds.val.images[:, 0, 0, 0].long() + 256 * ds.val.images[:, 0, 0, 1].long()
    assert torch.equal(ref.labels[val_ids], ds.val.labels)


def test_train_size_subsets_what_remains_and_the_validation_images_do_not_move(fake):
    full = data.load(cifar_cfg(val_size=100))
    small = data.load(cifar_cfg(val_size=100, train_size=300))
    assert ids(small.val) == ids(full.val)  # whatever train_size
    assert len(small.train.labels) == 300 and ids(small.train) <= ids(full.train)
    assert torch.bincount(small.train.labels, minlength=10).tolist() == [30] * 10
    with pytest.raises(ConfigError, match="data.train_size must be at most 900"):
        data.load(cifar_cfg(val_size=100, train_size=901))
    with pytest.raises(ConfigError, match="data.val_size must be smaller than the training split"):
        data.load(cifar_cfg(val_size=1000))


def test_no_validation_split_changes_nothing(fake):
    before = data.load(cifar_cfg(train_size=300))
    assert before.val is None
    ref = fake_cifar(None).train
    assert ids(before.train) == set(data.balanced_subset(ref.labels, 300, 0, "data.train_size").tolist())


def test_synthetic_makes_the_validation_images_besides_train_size():
    cfg = OmegaConf.create(
        {
            "name": "synthetic",
            "num_classes": 4,
            "train_size": 64,
            "test_size": 16,
            "val_size": 20,
            "subset_seed": 0,
            "augment": False,
        }
    )
    ds = data.load(cfg)
    assert len(ds.train.labels) == 64 and len(ds.val.labels) == 20 and len(ds.test.labels) == 16
    assert torch.bincount(ds.val.labels, minlength=4).tolist() == [5] * 4
    train = {tuple(x.flatten()[:64].tolist()) for x in ds.train.images}
    assert not any(tuple(x.flatten()[:64].tolist()) in train for x in ds.val.images)


def test_folder_holds_out_validation_images(tmp_path):
    from PIL import Image

    for split, n in (("train", 12), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                colour = (i * 20, 100 if c == "a" else 200, 0)
                Image.new("RGB", (32, 32), colour).save(tmp_path / split / c / f"{i}.png")
    cfg = OmegaConf.create(
        {"name": "folder", "root": str(tmp_path), "train_size": 10, "test_size": None, "val_size": 4, "subset_seed": 0}
    )
    ds = data.load(cfg)
    assert len(ds.train.labels) == 10 and len(ds.val.labels) == 4 and ds.val.labels.tolist().count(0) == 2

    def key(s):
        return {(int(x[0, 0, 0]), int(x[1, 0, 0])) for x in s.images}

    assert not key(ds.train) & key(ds.val)


@pytest.mark.parametrize("value", [-1, 1.5, "x", True])
def test_bad_val_size_is_refused_in_one_line_naming_the_key(value):
    from hydra import compose, initialize_config_dir

    from conftest import ROOT

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["data=synthetic"])
    cfg.data.val_size = value
    with pytest.raises(ConfigError, match=r"^data\.val_size must be an integer >= 0") as err:
        validate(cfg)
    assert "\n" not in str(err.value)
    cfg.data = cifar_cfg(val_size=49_000, train_size=2000, augment=True, root="data", download=False)
    with pytest.raises(ConfigError, match=r"^data\.val_size must leave data\.train_size \(2000\)"):
        validate(cfg)

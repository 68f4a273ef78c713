import errno
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from resattn import data
from resattn.data import PAD, Loader, Split, balanced_subset, crop_flip


def test_balanced_subset_is_balanced_seeded_and_distinct():
    labels = torch.arange(1000) % 10
    idx = balanced_subset(labels, 95, seed=3, key="data.train_size")
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts.max() - counts.min() <= 1 and len(set(idx.tolist())) == 95
    assert torch.equal(idx, balanced_subset(labels, 95, seed=3, key="k"))
    assert not torch.equal(idx, balanced_subset(labels, 95, seed=4, key="k"))
    with pytest.raises(ValueError, match="data.train_size"):
        balanced_subset(labels, 1001, seed=0, key="data.train_size")


def coords_image(n: int) -> torch.Tensor:
    """Pixel (y, x) holds y+1 in channel 0 and x+1 in channel 1: any crop or flip can be read back off it."""
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    img = torch.stack([ys + 1, xs + 1, torch.zeros_like(ys)]).to(torch.uint8)
    return img.expand(n, 3, 32, 32).clone()


def test_crop_offsets_stay_within_pad_and_cover_the_range_and_flips_are_fair():
    n = 4000
    x = coords_image(n)
    g = torch.Generator().manual_seed(0)
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g)
    flips = torch.randint(0, 2, (n,), generator=g, dtype=torch.bool)
    out = crop_flip(x, offsets, flips)
    # Read each crop's shift and flip back off the image, from a pixel that is never padding.
    centre = out[:, :, 15:17, 15:17].long() - 1
    dy = centre[:, 0, 0, 0] - 15
    dx_left, dx_right = centre[:, 1, 0, 0] - 15, centre[:, 1, 0, 1] - 16
    flipped = centre[:, 1, 0, 1] < centre[:, 1, 0, 0]
    assert torch.equal(flipped, flips)
    assert torch.equal(dy, offsets[:, 0] - PAD)
    assert set(dy.tolist()) == set(range(-PAD, PAD + 1))
    # Unflipped, output column 15 shows source column 15 + dx; flipped, output column 16 shows 15 + dx.
    dx = torch.where(flipped, dx_right + 1, dx_left)
    assert torch.equal(dx, offsets[:, 1] - PAD)
    assert set(dx.tolist()) == set(range(-PAD, PAD + 1))
    # About half flipped: binomial(4000, 0.5) lies within 4 sigma (±126) of 2000.
    assert abs(int(flips.sum()) - n // 2) < 126
    # Padding is zeros, where the crop reaches past the edge.
    assert (out[offsets[:, 0] == 0][:, :, :PAD] == 0).all()


def test_loader_without_augmentation_yields_the_normalised_source_exactly():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(50) % 10
    mean, std = data.channel_stats(images)
    loader = Loader(Split(images, labels), 16, mean, std, "cpu", channels_last=False)
    xs, ys = zip(*loader.batches())
    assert len(xs) == len(loader) == 4
    expected = (images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat(xs), expected)
    assert torch.equal(torch.cat(ys), labels)


def test_shuffled_epochs_replay_from_a_saved_generator_state():
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    mean, std = data.channel_stats(images)
    loader = Loader(
        Split(images, torch.arange(40)), 8, mean, std, "cpu", augment=True, generator=torch.Generator().manual_seed(1)
    )
    state = loader.generator.get_state()
    first = [x for x, _ in loader.batches()]
    loader.generator.set_state(state)
    replay = [x for x, _ in loader.batches(skip=2)]
    assert len(replay) == 3 and all(torch.equal(a, b) for a, b in zip(first[2:], replay))
    assert not torch.equal(torch.cat(first), torch.cat([x for x, _ in loader.batches()]))


def test_synthetic_data_is_seeded_and_class_balanced():
    cfg = OmegaConf.create({"num_classes": 10, "train_size": 200, "test_size": 50, "subset_seed": 0})
    a, b = data.synthetic(cfg), data.synthetic(cfg)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert torch.bincount(a.train.labels).tolist() == [20] * 10


def make_folder(root, colours):
    from PIL import Image

    for split in ("train", "test"):
        for c, colour in colours.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.new("RGB", (48, 48), colour).save(root / split / c / f"{i}.png")


def folder_cfg(root):
    return OmegaConf.create(
        {"name": "folder", "root": str(root), "train_size": None, "test_size": None, "subset_seed": 0, "augment": False}
    )


def test_folder_cache_is_made_used_and_rebuilt_when_contents_change(tmp_path, caplog):
    make_folder(tmp_path, {"red": (255, 0, 0), "blue": (0, 0, 255)})
    caplog.set_level("INFO")
    first = data.load(folder_cfg(tmp_path))
    assert "made image cache" in caplog.text
    assert first.classes == ["blue", "red"] and first.train.images.shape == (8, 3, 32, 32)
    assert first.train.images[first.train.labels == 1][:, 0].float().mean() > 250  # red, resized to 32x32
    caplog.clear()
    second = data.load(folder_cfg(tmp_path))
    assert "using image cache" in caplog.text and torch.equal(first.train.images, second.train.images)
    # A new image changes the file list: a new cache, holding the new image.
    from PIL import Image

    Image.new("RGB", (32, 32), (0, 255, 0)).save(tmp_path / "train" / "red" / "9.png")
    caplog.clear()
    third = data.load(folder_cfg(tmp_path))
    assert "made image cache" in caplog.text and len(third.train.labels) == 9


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    make_folder(tmp_path, {"a": (10, 20, 30), "b": (200, 100, 0)})
    good = data.load(folder_cfg(tmp_path))
    for cache in data.cache_dir(folder_cfg(tmp_path)).glob("*.pt"):
        cache.write_bytes(cache.read_bytes()[:100])
    caplog.clear()
    again = data.load(folder_cfg(tmp_path))
    assert "unreadable" in caplog.text and "rebuilding" in caplog.text
    assert torch.equal(good.train.images, again.train.images)


def test_folder_without_splits_or_images_is_refused(tmp_path):
    with pytest.raises(data.ConfigError, match="data.root.*train/"):
        data.load(folder_cfg(tmp_path))
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(data.ConfigError, match="data.root: no images"):
        data.load(folder_cfg(tmp_path))


def test_training_loader_drops_the_last_partial_batch():
    images = torch.zeros(50, 3, 32, 32, dtype=torch.uint8)
    mean, std = torch.zeros(3), torch.ones(3)
    train = Loader(Split(images, torch.arange(50)), 16, mean, std, "cpu", generator=torch.Generator(), drop_last=True)
    assert len(train) == 3 and [len(y) for _, y in train.batches()] == [16, 16, 16]
    small = Loader(
        Split(images[:10], torch.arange(10)), 16, mean, std, "cpu", generator=torch.Generator(), drop_last=True
    )
    assert [len(y) for _, y in small.batches()] == [10]


def tree(root) -> dict:
    """Every file and folder under root with its modification time: what a load must leave as it found it."""
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_the_cache_defaults_to_the_users_cache_folder_one_folder_per_root(tmp_path, monkeypatch, caplog):
    """Issue 39: the cache landed inside data.root, a folder often shared or read-only."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    roots = [tmp_path / "one", tmp_path / "two"]
    for root in roots:  # the same images in two places: each root keeps its own cache files
        make_folder(root, {"a": (10, 20, 30), "b": (200, 100, 0)})
    before = [tree(root) for root in roots]
    caplog.set_level("INFO")
    loads = [data.load(folder_cfg(root)) for root in roots]
    assert [tree(root) for root in roots] == before
    folders = sorted((tmp_path / "xdg" / "resattn").iterdir())
    assert len(folders) == 2 and [len(list(f.glob("*.pt"))) for f in folders] == [2, 2]
    assert caplog.text.count("made image cache") == 4
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir(folder_cfg(roots[0])).parent == tmp_path / "home" / ".cache" / "resattn"
    assert loads[0].fingerprint == loads[1].fingerprint


def test_data_cache_dir_moves_the_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    make_folder(tmp_path / "images", {"a": (10, 20, 30), "b": (200, 100, 0)})
    cfg = OmegaConf.merge(folder_cfg(tmp_path / "images"), {"cache_dir": str(tmp_path / "elsewhere")})
    caplog.set_level("INFO")
    data.load(cfg)
    assert len(list((tmp_path / "elsewhere").glob("*/*.pt"))) == 2 and not (tmp_path / "xdg").exists()
    caplog.clear()
    data.load(cfg)
    assert caplog.text.count("using image cache") == 2 and str(tmp_path / "elsewhere") in caplog.text


def test_a_cached_load_has_the_fingerprint_of_a_decoded_one(tmp_path, monkeypatch, caplog):
    """The fingerprint hashes the images, so where they came from changes nothing a run computes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    make_folder(tmp_path / "images", {"a": (10, 20, 30), "b": (200, 100, 0)})
    cfg = OmegaConf.merge(folder_cfg(tmp_path / "images"), {"train_size": 6})
    caplog.set_level("INFO")
    decoded = data.load(cfg)
    assert "made image cache" in caplog.text and "using image cache" not in caplog.text
    caplog.clear()
    cached = data.load(cfg)
    assert caplog.text.count("using image cache") == 2 and "made image cache" not in caplog.text
    assert cached.fingerprint == decoded.fingerprint == data.arrays_fingerprint(decoded)
    assert torch.equal(cached.train.images, decoded.train.images)


def test_a_cache_left_inside_data_root_by_an_older_version_is_not_read(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "images"
    make_folder(root, {"a": (10, 20, 30), "b": (200, 100, 0)})
    decoded = data.load(folder_cfg(root))
    # a file of the right name and shape where older versions put it, holding other images
    old = root / ".resattn_cache"
    old.mkdir()
    for cache in data.cache_dir(folder_cfg(root)).glob("*.pt"):
        torch.save(torch.zeros_like(torch.load(cache)), old / cache.name)
        cache.unlink()
    caplog.set_level("INFO")
    again = data.load(folder_cfg(root))
    assert torch.equal(again.train.images, decoded.train.images) and again.fingerprint == decoded.fingerprint
    assert f"{old} holds decoded images an older resattn cached there; they are no longer read" in caplog.text


def test_a_read_only_data_root_is_never_written(tmp_path, monkeypatch, caplog):
    """Read-only media, someone else's files: nothing under data.root is even tried (permission bits do not stop
    a root user, so every write under it fails here, and is recorded)."""
    root, xdg = tmp_path / "images", tmp_path / "xdg"
    make_folder(root, {"a": (10, 20, 30), "b": (200, 100, 0)})
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    tried = []

    def refuse_under_root(path) -> None:
        if Path(path).is_relative_to(root):
            tried.append(Path(path))
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    mkdir, replace, save = Path.mkdir, Path.replace, torch.save
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refuse_under_root(self) or mkdir(self, *a, **k))
    monkeypatch.setattr(Path, "replace", lambda self, target: refuse_under_root(target) or replace(self, target))
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: refuse_under_root(f) or save(obj, f, *a, **k))
    before = tree(root)
    caplog.set_level("INFO")
    first = data.load(folder_cfg(root))
    assert tried == [] and tree(root) == before and "cannot write" not in caplog.text
    assert len(list(data.cache_dir(folder_cfg(root)).glob("*.pt"))) == 2
    caplog.clear()
    again = data.load(folder_cfg(root))
    assert caplog.text.count("using image cache") == 2 and torch.equal(first.train.images, again.train.images)


def test_a_run_resumes_with_its_cache_in_another_folder(tmp_path):
    """data.cache_dir says where the decoded images are kept, not what the run computes
    (identity.NOT_THE_EXPERIMENT): a run stopped with one resumes with another."""
    from test_records import BMP_RUN, bmp_folder, make, stopped_after_one_step

    from resattn import engine

    images, run = bmp_folder(tmp_path / "images", 10), tmp_path / "run"
    folder = [*BMP_RUN, f"data.root={images}"]
    stopped_after_one_step(make(*folder, f"data.cache_dir={tmp_path / 'first'}"), run)
    done = engine.train(make(*folder, f"data.cache_dir={tmp_path / 'second'}"), run)
    assert done["status"] == "completed" and done["pieces"][1]["start_step"] == 1
    assert [len(list((tmp_path / d).glob("*/*.pt"))) for d in ("first", "second")] == [2, 2]

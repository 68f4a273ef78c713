"""Datasets as uint8 tensors held on the training device, and a loader that augments per batch.

Every dataset comes out as `Split(images (N, 3, 32, 32) uint8, labels (N,) int64)`; nothing
per image happens in the training loop.

`data.val_size` (0 = none) holds a class-balanced part of the training split out of training, as
`Dataset.val`: it is drawn first, from the whole training split and fixed by `data.subset_seed` (the
same images for every run seed and every `data.train_size`); `data.train_size` then takes its subset
from what remains. Synthetic data makes train_size + val_size training images, so train_size is what
trains there too. The test split is never touched.
"""

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from resattn.errors import ConfigError

log = logging.getLogger(__name__)
PAD = 4  # random-crop padding, in pixels
OLD_CACHE = ".resattn_cache"  # where data=folder cached decoded images inside data.root before data.cache_dir


@dataclass
class Split:
    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: list[str]
    val: Split | None = None  # held out of the training split (data.val_size); None without one
    # what the data is, wherever it lives: a hash of the decoded images and labels (sha256 hex), filled in by
    # load. A resumed run refuses other data, the report pools runs only on the same data (identity.py), and two
    # data.root folders holding the same images are the same data.
    fingerprint: str = ""


def digest(*parts) -> str:
    """sha256 hex of the parts in order: tensors by dtype, shape and bytes, anything else by its repr."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.contiguous().cpu()
            h.update(f"{part.dtype}{tuple(part.shape)}\0".encode())
            h.update(part.numpy().tobytes())
        else:
            h.update(f"{part!r}\0".encode())
    return h.hexdigest()


def arrays_fingerprint(ds: Dataset) -> str:
    """What the data is: a hash of every image and label the run uses (after subsetting), whatever their source."""
    splits = [ds.train, ds.test, *([ds.val] if ds.val is not None else [])]
    return digest("arrays", *(t for s in splits for t in (s.images, s.labels)), ds.classes)


def balanced_subset(labels: torch.Tensor, size: int | None, seed: int, key: str) -> torch.Tensor:
    """Indices of a seeded subset of `size` items with the classes as equal as they can be."""
    n = len(labels)
    if size is None or size == n:
        return torch.arange(n)
    if size > n:
        raise ConfigError(f"{key} must be at most {n} (the split's size), got {size}")
    g = torch.Generator().manual_seed(seed)
    # A random order within each class, then classes interleaved: the first `size` are balanced.
    order = torch.randperm(n, generator=g)
    by_class = labels[order].argsort(stable=True)
    rank = torch.empty(n, dtype=torch.long)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank[by_class] = torch.arange(n) - starts.repeat_interleave(counts)
    interleaved = torch.argsort(rank * len(counts) + labels[order], stable=True)
    return order[interleaved[:size]].sort().values


def train_val_indices(
    labels: torch.Tensor, train_size: int | None, val_size: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Indices of the training images and of the validation images held out of them (None when val_size is 0).

    The validation part is a balanced subset of the whole split; train_size then subsets the rest."""
    n = len(labels)
    if not val_size:
        return balanced_subset(labels, train_size, seed, "data.train_size"), None
    if val_size >= n:
        raise ConfigError(f"data.val_size must be smaller than the training split ({n} images), got {val_size}")
    val = balanced_subset(labels, val_size, seed, "data.val_size")
    rest = torch.ones(n, dtype=torch.bool)
    rest[val] = False
    rest = rest.nonzero().squeeze(1)
    if train_size is not None and train_size > len(rest):
        raise ConfigError(
            f"data.train_size must be at most {len(rest)} (the training split less data.val_size "
            f"{val_size}), got {train_size}"
        )
    return rest[balanced_subset(labels[rest], train_size, seed, "data.train_size")], val


def synthetic(cfg: DictConfig) -> Dataset:
    """Class k: its own hue and stripe orientation, with a random phase and heavy noise."""
    k = cfg.num_classes
    g = torch.Generator().manual_seed(cfg.subset_seed)

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def draw(labels: torch.Tensor) -> torch.Tensor:
        angle = labels.float() * math.pi / k
        phase = torch.rand(len(labels), 1, 1, generator=g) * 2 * math.pi
        coord = xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]
        stripes = torch.sin(coord * 0.8 + phase)  # (n, 32, 32)
        hue = labels.float()[:, None] / k * 2 * math.pi + torch.tensor([0.0, 2.1, 4.2])
        colour = 0.5 + 0.35 * torch.cos(hue)  # (n, 3)
        img = (
            colour[:, :, None, None] + 0.25 * stripes[:, None] + 0.2 * torch.randn(len(labels), 3, 32, 32, generator=g)
        )
        return (img.clamp(0, 1) * 255).round().to(torch.uint8)

    def make(n: int) -> Split:
        labels = torch.arange(n) % k
        labels = labels[torch.randperm(n, generator=g)]
        # in chunks: float images of a CIFAR-sized set would take GBs for a moment
        return Split(torch.cat([draw(chunk) for chunk in labels.split(4096)]), labels)

    # held out by load(): made to train_size + val_size, so train_size images remain to train on
    return Dataset(
        make(cfg.train_size + (cfg.get("val_size") or 0)), make(cfg.test_size), [f"class{i}" for i in range(k)]
    )


def _remove_if_new_and_empty(root: Path, root_is_new: bool) -> None:
    """A refused run leaves nothing behind: not the empty data/ torchvision made before its download failed."""
    if root_is_new and root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def cifar10(cfg: DictConfig) -> Dataset:
    from torchvision.datasets import CIFAR10

    root = Path(cfg.root)
    root_is_new = not root.exists()  # torchvision creates it before downloading
    splits = []
    for train in (True, False):
        try:
            ds = CIFAR10(str(root), train=train, download=cfg.download)
        except RuntimeError:  # torchvision: not found (download off) or corrupted
            _remove_if_new_and_empty(root, root_is_new)
            raise ConfigError(
                f"data.root: CIFAR-10 not found (or corrupt) in '{root}'; set data.download=true, "
                "point data.root at a folder holding cifar-10-batches-py/, use data=folder data.root=PATH for images "
                "on disk, or data=synthetic"
            ) from None
        except OSError as err:  # URLError and socket errors: no network
            _remove_if_new_and_empty(root, root_is_new)
            raise ConfigError(
                f"data.root: CIFAR-10 is not in '{root}' and could not be downloaded (offline? {err}); "
                "copy cifar-10-batches-py/ into data.root, use data=folder data.root=PATH for images on disk "
                "(PATH/train/<class>/, PATH/test/<class>/), or data=synthetic"
            ) from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits.append(Split(images, torch.tensor(ds.targets, dtype=torch.long)))
    return Dataset(splits[0], splits[1], list(ds.classes))


def _decode(paths: list[str]) -> torch.Tensor:
    from PIL import Image

    out = torch.empty(len(paths), 3, 32, 32, dtype=torch.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (32, 32):
                im = im.resize((32, 32), Image.BILINEAR)
            out[i] = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(32, 32, 3).permute(2, 0, 1)
    return out


def user_cache_dir() -> Path:
    """The user's own cache folder, $XDG_CACHE_HOME/resattn or ~/.cache/resattn: writable where a dataset
    folder often is not (shared, read-only, someone else's)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resattn"


def cache_dir(cfg: DictConfig) -> Path:
    """Where data=folder keeps the decoded images of data.root: under data.cache_dir (default: user_cache_dir),
    in a folder of its own per data.root (a hash of its resolved path), so two roots never share a file.

    Caches that older versions wrote into data.root/.resattn_cache/ are not read: a file inside a shared
    dataset folder may be anyone's, from any version, and the one-off cost of decoding again is small beside
    keeping a second place to look in for good; folder() names the old folder in the log, to be deleted."""
    base = Path(cfg.cache_dir).expanduser() if cfg.get("cache_dir") else user_cache_dir()
    return base / hashlib.sha256(str(Path(cfg.root).resolve()).encode()).hexdigest()[:16]


def _load_cache(cache: Path, n: int) -> torch.Tensor | None:
    try:
        images = torch.load(cache, weights_only=True)
        if images.shape == (n, 3, 32, 32) and images.dtype == torch.uint8:
            log.info("using image cache %s", cache)
            return images
        raise ValueError(f"holds {tuple(images.shape)} {images.dtype}")
    except Exception as err:  # a truncated or foreign file: never trusted, rebuilt
        log.warning("image cache %s is unreadable (%s); rebuilding it", cache, err)
        return None


def _save_cache(images: torch.Tensor, cache: Path) -> None:
    """Written whole or not at all: to a file of this process's own, then renamed over the cache (parallel
    sweep jobs may build the same cache; a reader never sees half a file)."""
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(images, tmp)
        tmp.replace(cache)
        log.info("made image cache %s", cache)
    except OSError as err:
        tmp.unlink(missing_ok=True)  # a disk that filled up mid-write keeps no partial file
        log.warning(
            "cannot write image cache %s (%s); decoding the images again next run (data.cache_dir "
            "names another folder)",
            cache,
            err,
        )


def files_digest(root: Path, paths: list[str]) -> str:
    """sha256 hex of the files' paths under root and their bytes: the cache's key (other images under the
    same names and sizes are another key)."""
    h = hashlib.sha256()
    for p in paths:
        content = Path(p).read_bytes()
        h.update(f"{Path(p).relative_to(root)}\0{len(content)}\0".encode())
        h.update(content)
    return h.hexdigest()


def _cached_decode(root: Path, cache_folder: Path, split: str, paths: list[str]) -> torch.Tensor:
    """Decode once; later runs load <cache_folder>/<split>-<hash>.pt, keyed by the files' names and contents."""
    cache = cache_folder / f"{split}-{files_digest(root, paths)[:16]}.pt"
    images = _load_cache(cache, len(paths)) if cache.exists() else None
    if images is None:
        images = _decode(paths)
        _save_cache(images, cache)
    return images


def folder(cfg: DictConfig) -> Dataset:
    from torchvision.datasets import ImageFolder

    root, cache_folder = Path(cfg.root), cache_dir(cfg)
    if (root / OLD_CACHE).is_dir():
        log.info(
            "%s holds decoded images an older resattn cached there; they are no longer read (the cache is "
            "in %s now): delete the folder to free its space",
            root / OLD_CACHE,
            cache_folder.parent,
        )
    splits, classes, val = [], None, None
    for split, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        if not (root / split).is_dir():
            raise ConfigError(f"data.root: '{root}' must hold {split}/<class>/ folders of images (no {split}/ found)")
        try:
            found = ImageFolder(str(root / split), loader=lambda p: p)
        except (FileNotFoundError, RuntimeError) as err:
            raise ConfigError(f"data.root: no images in '{root / split}' ({err})") from None
        if classes is not None and found.classes != classes:
            raise ConfigError(f"data.root: train/ and test/ in '{root}' must hold the same class folders")
        classes = found.classes
        labels = torch.tensor(found.targets, dtype=torch.long)
        if split == "train":
            keep, held = train_val_indices(labels, size, cfg.get("val_size"), cfg.subset_seed)
            if held is not None:
                paths = [found.samples[i][0] for i in held.tolist()]
                val = Split(_cached_decode(root, cache_folder, split, paths), labels[held])
        else:
            keep = balanced_subset(labels, size, cfg.subset_seed, f"data.{split}_size")
        paths = [found.samples[i][0] for i in keep.tolist()]
        splits.append(Split(_cached_decode(root, cache_folder, split, paths), labels[keep]))
    return Dataset(splits[0], splits[1], classes, val)


def load(cfg: DictConfig) -> Dataset:
    ds = {"cifar10": cifar10, "synthetic": synthetic, "folder": folder}[cfg.name](cfg)
    if cfg.name == "cifar10":  # the folder loader subsets before decoding; synthetic is made to size
        s = ds.train
        keep, held = train_val_indices(s.labels, cfg.train_size, cfg.get("val_size"), cfg.subset_seed)
        ds.train = Split(s.images[keep], s.labels[keep])
        ds.val = None if held is None else Split(s.images[held], s.labels[held])
        keep = balanced_subset(ds.test.labels, cfg.test_size, cfg.subset_seed, "data.test_size")
        ds.test = Split(ds.test.images[keep], ds.test.labels[keep])
    elif cfg.name == "synthetic" and cfg.get("val_size"):
        s = ds.train
        keep, held = train_val_indices(s.labels, None, cfg.val_size, cfg.subset_seed)
        ds.train, ds.val = Split(s.images[keep], s.labels[keep]), Split(s.images[held], s.labels[held])
    ds.fingerprint = arrays_fingerprint(ds)  # after subsetting: the images the run uses
    return ds


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, on the 0-1 scale."""
    x = images.float().div_(255).transpose(0, 1).reshape(3, -1)
    return x.mean(1), x.std(1)


class Loader:
    """Batches of one split, held on `device` as uint8, normalised in `dtype` per batch.

    Training order and augmentation draw from `generator` once per epoch, so
    `batches(skip=k)` after restoring the generator's state replays an epoch from batch k.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean,
        std,
        device,
        dtype=torch.float32,
        channels_last: bool = True,
        augment: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.augment, self.generator, self.drop_last = batch_size, augment, generator, drop_last
        self.mean = (mean * 255).to(device, dtype).view(1, 3, 1, 1)
        self.std = (std * 255).to(device, dtype).view(1, 3, 1, 1)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        if self.drop_last:  # a split smaller than one batch still gives one
            return max(1, len(self.labels) // self.batch_size)
        return math.ceil(len(self.labels) / self.batch_size)

    def batches(self, skip: int = 0):
        n, device = len(self.labels), self.images.device
        if self.generator is not None:
            order = torch.randperm(n, generator=self.generator).to(device)
        else:
            order = torch.arange(n, device=device)
        if self.augment:
            offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=self.generator).to(device)
            flips = torch.randint(0, 2, (n,), generator=self.generator, dtype=torch.bool).to(device)
        for start in range(skip * self.batch_size, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = crop_flip(x, offsets[start : start + len(idx)], flips[start : start + len(idx)])
            yield self.normalise(x), self.labels[idx]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=self.memory_format)


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random crop from the zero-padded image at (dy, dx) = offsets, mirrored where `flips`; one gather."""
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = offsets[:, 0:1] + ar_h
    cols = offsets[:, 1:2] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]

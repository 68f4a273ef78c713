"""Checks of the composed config, so every bad value fails at once with one line naming its key."""

import json
import math

from omegaconf import DictConfig, OmegaConf

from resattn.model import PATTERNS


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become JSON text, so every value can be compared and hashed."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


class ConfigError(ValueError):
    """A bad config value or input; str(err) is the one line shown to the user."""


def _number(cfg: DictConfig, key: str):
    value = cfg
    for part in key.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return value


def _at_least_one(cfg: DictConfig, key: str) -> None:
    value = _number(cfg, key)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def validate(cfg: DictConfig) -> None:
    p = cfg.pattern
    _one_of("pattern.name", p.name, PATTERNS)
    placement = PATTERNS[p.name][0]
    if p.placement != placement:
        raise ConfigError(f"pattern.placement must be {placement} for pattern {p.name} (the placement follows from "
                          f"the pattern: baseline none, p1 inside, p2 post_add, p3 pre), got {p.placement!r}")
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    lam = _number(cfg, "pattern.lam_init")
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"pattern.lam_init must be a number in [0, 1], got {lam!r}")
    _one_of("pattern.spatial_kernel", p.spatial_kernel, (3, 7))
    _at_least_one(cfg, "pattern.reduction")
    for key in ("controlled", "lam_learnable"):
        _one_of(f"pattern.{key}", p[key], (True, False))
    if not 0 < _number(cfg, "model.width") < math.inf:
        raise ConfigError(f"model.width must be a number > 0, got {cfg.model.width!r}")
    for key in ("trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size", "trainer.log_every_n_steps"):
        _at_least_one(cfg, key)
    for key in ("optim.lr", "optim.momentum", "optim.weight_decay", "optim.label_smoothing", "optim.warmup_frac"):
        if _number(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_number(cfg, key)!r}")
    if not 0 < _number(cfg, "optim.warmup_frac") < 1:
        raise ConfigError(f"optim.warmup_frac must be a number in (0, 1), got {cfg.optim.warmup_frac!r}")
    if not _number(cfg, "optim.label_smoothing") < 1:
        raise ConfigError(f"optim.label_smoothing must be a number in [0, 1), got {cfg.optim.label_smoothing!r}")
    _one_of("optim.schedule", cfg.optim.schedule, ("onecycle", "cosine"))
    _one_of("trainer.precision", cfg.trainer.precision, ("auto", "bf16", "fp32"))
    _one_of("trainer.compile", cfg.trainer.compile, ("auto", True, False))
    _one_of("trainer.channels_last", cfg.trainer.channels_last, (True, False))
    _one_of("data.name", cfg.data.name, ("cifar10", "synthetic", "folder"))
    if cfg.data.name == "folder" and OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError("data.root is required for data=folder: data.root=/path holding train/ and test/")
    for key in ("train_size", "test_size"):
        if cfg.data.get(key) is not None or cfg.data.name == "synthetic":  # synthetic data has no "all"
            _at_least_one(cfg, f"data.{key}")
    resume = cfg.trainer.resume
    if resume is True or (resume not in ("auto", False, None) and not isinstance(resume, str)):
        raise ConfigError(f"trainer.resume must be auto, false or a checkpoint path, got {resume!r}")
    _one_of("data.augment", cfg.data.augment, (True, False))
    threads = cfg.trainer.num_threads
    if threads != "auto":
        _at_least_one(cfg, "trainer.num_threads")
    every = cfg.tracking.attention_maps_every
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise ConfigError(f"tracking.attention_maps_every must be null or an integer >= 0, got {every!r}")

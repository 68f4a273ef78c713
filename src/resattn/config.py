"""Checks of the composed config, so every bad value fails at once with one line naming its key."""

import math
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from resattn.attention import ATTENTIONS, attention_keys
from resattn.blocks import LAM_SHAPES
from resattn.corruptions import CORRUPTIONS, FAMILIES, SEVERITIES
from resattn.errors import ConfigError
from resattn.external import check_config, source
from resattn.model import PATTERNS
from resattn.resnet import DEPTHS, SHORTCUTS

# keys that moved to another group -> where they are now
MOVED_KEYS = {
    "pattern.reduction": "attention.reduction (set with the attention that has it, e.g. attention=cbam "
    "attention.reduction=...)",
    "pattern.spatial_kernel": "attention.spatial_kernel (set with the attention that has it, e.g. attention=cbam "
    "attention.spatial_kernel=...)",
    "trainer.time_limit": "trainer.deadline (seconds after the command started, for the whole command, not per "
    "job: trainer.deadline=...)",
}


CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the project's Hydra configs (src/resattn/ -> configs/)
_ABSENT = object()


def _number(cfg: DictConfig, key: str, prefix: str = ""):
    """cfg's value at the dotted key; errors name the key as prefix + key (the path of cfg in the whole config)."""
    value = cfg
    for part in key.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{prefix}{key} must be a number, got {value!r}")
    return value


def _at_least_one(cfg: DictConfig, key: str, prefix: str = "") -> None:
    value = _number(cfg, key, prefix)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{prefix}{key} must be an integer >= 1, got {value!r}")


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def moved_keys(args: list[str]) -> list[str]:
    """The error line for each command-line override of a key that moved (Hydra would only say "not in struct")."""
    messages = []
    for arg in args:
        key = arg.lstrip("+~").partition("=")[0]
        if key in MOVED_KEYS:
            messages.append(f"{key} is now {MOVED_KEYS[key]}")
    return messages


def _validate_attention(a: DictConfig) -> None:
    if source(a) != "resattn":  # timm's or the researcher's own: their own constructors say what they take
        check_config(a)
        return
    _one_of("attention.name", a.name, ATTENTIONS)
    keys, expected = set(a) - {"name"}, set(attention_keys(a.name))
    if keys != expected:
        owners = " or ".join(n for n in ATTENTIONS if set(attention_keys(n)) == keys) or "none"
        raise ConfigError(
            f"attention.name must be {owners} for the keys {', '.join(sorted(keys)) or '(none)'}; "
            f"choose another attention with attention={a.name}, got {a.name!r}"
        )
    if "reduction" in keys:
        _at_least_one(a, "reduction", "attention.")
    if "spatial_kernel" in keys:
        _one_of("attention.spatial_kernel", a.spatial_kernel, (3, 7))
    if "bias" in keys:
        _one_of("attention.bias", a.bias, (True, False))
    if "gamma" in keys and not 0 < _number(a, "gamma", "attention.") < math.inf:
        raise ConfigError(f"attention.gamma must be a number > 0, got {a.gamma!r}")
    if "beta" in keys and not math.isfinite(_number(a, "beta", "attention.")):
        raise ConfigError(f"attention.beta must be a finite number, got {a.beta!r}")


def _validate_model(m: DictConfig) -> None:
    _one_of("model.name", m.name, ("simplecnn", "resnet"))
    if not 0 < _number(m, "width", "model.") < math.inf:
        raise ConfigError(f"model.width must be a number > 0, got {m.width!r}")
    if m.name == "resnet":
        if isinstance(m.depth, bool) or not isinstance(m.depth, int) or m.depth not in DEPTHS:
            raise ConfigError(f"model.depth must be 6n+2, one of {', '.join(map(str, DEPTHS))}, got {m.depth!r}")
        _one_of("model.shortcut", m.shortcut, SHORTCUTS)


def _validate_optim(cfg: DictConfig) -> None:
    """SGD's own checks come too late (at the first step) or not at all (momentum 1.5 diverges quietly)."""
    if not 0 < _number(cfg, "optim.lr") < math.inf:
        raise ConfigError(f"optim.lr must be a finite number > 0, got {cfg.optim.lr!r}")
    if not 0 <= _number(cfg, "optim.momentum") < 1:
        raise ConfigError(f"optim.momentum must be a number in [0, 1), got {cfg.optim.momentum!r}")
    if not 0 <= _number(cfg, "optim.weight_decay") < math.inf:
        raise ConfigError(f"optim.weight_decay must be a finite number >= 0, got {cfg.optim.weight_decay!r}")
    if not 0 < _number(cfg, "optim.warmup_frac") < 1:
        raise ConfigError(f"optim.warmup_frac must be a number in (0, 1), got {cfg.optim.warmup_frac!r}")
    if not 0 <= _number(cfg, "optim.label_smoothing") < 1:
        raise ConfigError(f"optim.label_smoothing must be a number in [0, 1), got {cfg.optim.label_smoothing!r}")


def _validate_data(d: DictConfig) -> None:
    if "num_classes" in d:  # one class is no classification: every run would score 100%
        value = _number(d, "num_classes", "data.")
        if not isinstance(value, int) or value < 2:
            raise ConfigError(f"data.num_classes must be an integer >= 2, got {value!r}")


def _validate_hparams(cfg: DictConfig) -> None:
    """Each tracking.hparams key names a config key: of this config, or of another option of its group (model.depth
    is resnet's; SimpleCNN runs show it blank)."""
    for key in cfg.tracking.hparams:
        group, _, rest = str(key).partition(".")
        options = [OmegaConf.load(o) for o in sorted((CONFIGS / group).glob("*.yaml"))] if rest else []
        # an option's keys sit under the group, or (a `# @package _global_` option such as model/resnet) at the top
        if OmegaConf.select(cfg, str(key), default=_ABSENT) is _ABSENT and not any(
            OmegaConf.select(o, k, default=_ABSENT) is not _ABSENT for o in options for k in (rest, str(key))
        ):
            raise ConfigError(f"tracking.hparams: {key} is no config key; list keys such as optim.lr or model.width")


def validate(cfg: DictConfig) -> None:
    p = cfg.pattern
    _one_of("pattern.name", p.name, PATTERNS)
    placement = PATTERNS[p.name][0]
    if p.placement != placement:
        raise ConfigError(
            f"pattern.placement must be {placement} for pattern {p.name} (the placement follows from "
            f"the pattern: baseline none, p1 inside, p2 post_add, p3 pre, p4 skip), got {p.placement!r}"
        )
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        hint = "; seeds 0 to 2 are seed=range(0,3) (Hydra's range: the end is left out)" if ".." in str(seed) else ""
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}{hint}")
    lam = _number(cfg, "pattern.lam_init")
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"pattern.lam_init must be a number in [0, 1], got {lam!r}")
    for key in ("controlled", "lam_learnable"):
        _one_of(f"pattern.{key}", p[key], (True, False))
    _one_of("pattern.lam_shape", p.lam_shape, LAM_SHAPES)
    _validate_attention(cfg.attention)
    _validate_model(cfg.model)
    _validate_data(cfg.data)
    _validate_hparams(cfg)
    for key in ("trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size", "trainer.log_every_n_steps"):
        _at_least_one(cfg, key)
    if not 0 < _number(cfg, "optim.lam_lr_scale") < math.inf:
        raise ConfigError(f"optim.lam_lr_scale must be a number > 0, got {cfg.optim.lam_lr_scale!r}")
    _validate_optim(cfg)
    _one_of("optim.schedule", cfg.optim.schedule, ("onecycle", "cosine", "step"))
    _one_of("trainer.precision", cfg.trainer.precision, ("auto", "bf16", "fp32"))
    _one_of("trainer.compile", cfg.trainer.compile, ("auto", True, False))
    _one_of("trainer.channels_last", cfg.trainer.channels_last, (True, False))
    _one_of("data.name", cfg.data.name, ("cifar10", "synthetic", "folder"))
    if cfg.data.name == "folder" and OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError("data.root is required for data=folder: data.root=/path holding train/ and test/")
    for key in ("train_size", "test_size"):
        if cfg.data.get(key) is not None or cfg.data.name == "synthetic":  # synthetic data has no "all"
            _at_least_one(cfg, f"data.{key}")
    val_size = cfg.data.get("val_size") or 0  # configs older than the key: none
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
        raise ConfigError(f"data.val_size must be an integer >= 0 (0 = no validation split), got {val_size!r}")
    if cfg.data.name == "cifar10" and val_size + (cfg.data.train_size or 1) > 50_000:  # folder: checked on loading
        raise ConfigError(
            f"data.val_size must leave data.train_size ({cfg.data.train_size or 'at least 1'}) of "
            f"CIFAR-10's 50000 training images, got {val_size}"
        )
    resume = cfg.trainer.resume
    if resume is True or (resume not in ("auto", False, None) and not isinstance(resume, str)):
        raise ConfigError(f"trainer.resume must be auto, false or a checkpoint path, got {resume!r}")
    _one_of("data.augment", cfg.data.augment, (True, False))
    limit = cfg.trainer.get("deadline")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit < math.inf
    ):
        raise ConfigError(f"trainer.deadline must be null or a number of seconds > 0, got {limit!r}")
    threads = cfg.trainer.num_threads
    if threads != "auto":
        _at_least_one(cfg, "trainer.num_threads")
    every = cfg.tracking.attention_maps_every
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise ConfigError(f"tracking.attention_maps_every must be null or an integer >= 0, got {every!r}")
    check_eval_config(cfg.eval)


LAM_KEYS = ("pattern.lam_init", "pattern.lam_learnable", "pattern.lam_shape", "optim.lam_lr_scale")


def has_gate(cfg: DictConfig) -> bool:
    """Whether the model has a λ gate: a placed attention (not baseline) that is controlled."""
    return cfg.pattern.placement != "none" and cfg.pattern.controlled is True


def inert_keys(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """The λ keys among the command line's overrides that do nothing for this run (no controlled gate)."""
    if has_gate(cfg):
        return []
    given = {arg.lstrip("+~").partition("=")[0] for arg in overrides}
    return [key for key in LAM_KEYS if key in given]


def inert_keys_message(cfg: DictConfig, keys: Sequence[str]) -> str:
    """One warning line; a warning, not an error: a sweep over patterns x lam_init is legitimate."""
    why = (
        "pattern baseline has no attention to gate"
        if cfg.pattern.placement == "none"
        else f"pattern {cfg.pattern.name} has pattern.controlled=false"
    )
    return (
        f"{', '.join(keys)} {'does' if len(keys) == 1 else 'do'} nothing in this run: λ needs a controlled gate "
        f"and {why} (pattern=p3_controlled, or pattern.controlled=true with p1..p4, has one)"
    )


def resolve_names(spec) -> list[str]:
    """eval.corruptions -> corruption names: null (off) -> []; `all`; a family; a name; or a list of these."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, Sequence):
        items = [items]  # a number or a mapping: reported as the bad value below
    names: list[str] = []
    for item in items:
        if item == "all":
            found = list(CORRUPTIONS)
        elif isinstance(item, str) and item in FAMILIES:
            found = FAMILIES[item]
        elif isinstance(item, str) and item in CORRUPTIONS:
            found = [item]
        else:
            raise ConfigError(
                f"eval.corruptions must be null, all, a family ({', '.join(FAMILIES)}) or a list of "
                f"names from {', '.join(CORRUPTIONS)}, got {item!r}"
            )
        names += [name for name in found if name not in names]
    return names


def resolve_severities(spec) -> list[int]:
    """eval.severities -> a list of integers in 1..5 (one integer is taken as a list of one)."""
    items = [spec] if isinstance(spec, int) else spec
    if (
        not isinstance(items, Sequence)
        or isinstance(items, str)
        or not items
        or any(isinstance(s, bool) or not isinstance(s, int) or s not in SEVERITIES for s in items)
    ):
        shown = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else spec
        raise ConfigError(f"eval.severities must be a list of integers in 1..5, got {shown!r}")
    return list(dict.fromkeys(items))


def check_eval_config(eval_cfg) -> None:
    """Raise ConfigError, naming the key, for any bad value under `eval`."""
    resolve_names(eval_cfg.corruptions)
    resolve_severities(eval_cfg.severities)
    for key in ("corruption_test_size", "corruption_every"):
        value = eval_cfg[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"eval.{key} must be null or an integer >= 1, got {value!r}")

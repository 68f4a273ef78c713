"""Attention modules from outside resattn: timm's attention layers by type, and a researcher's own class.

    attention=timm    attention.type=NAME                timm.layers.create_attn(NAME, channels, **keys)
    attention=custom  attention._target_=pkg.module.Cls  pkg.module.Cls(channels, **keys), by Hydra's instantiate

Further constructor keys come as +attention.KEY=VALUE. Which timm types qualify is asked of the installed
timm: the names its factory `get_attn` compares its argument with, each built from a channel count alone
and run on tensors shaped like the smallest and a typical gated tensor (PROBES). A type qualifies when it
returns its input's shape on each, so a new timm release brings its new gates; the answer is worked out
once per process.

The contract of a module of either kind: `module(v)` returns a tensor of v's shape; `module.masks(v)`, if
it has one, returns a dict with "channel" (B, C, 1, 1) and/or "spatial" (B, 1, H, W) maps for TensorBoard.
`check_contract` tests it on the built model, at the shapes its blocks give, before anything trains.
"""

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable, Mapping

import torch
from torch import nn

from resattn.attention import attention_layer
from resattn.errors import ConfigError

# configs/attention/ choices whose constructor keys no config can list: they take any +attention.KEY=VALUE
OPEN_ATTENTIONS = ("timm", "custom")
# (B, C, H, W) every timm type is probed on: the narrowest, smallest gated tensor the backbones give (ResNet-20
# at width 0.25, stage 3) and a typical one (SimpleCNN at width 0.25, block 1)
PROBES = ((2, 4, 8, 8), (2, 16, 32, 32))
MASK_SHAPES = {"channel": "(B, C, 1, 1)", "spatial": "(B, 1, H, W)"}


def source(attention: Mapping) -> str:
    """Where an attention config's module comes from: "custom" (a _target_), "timm" (a type) or "resattn"."""
    keys = set(attention)  # not `in`: a DictConfig hides a key whose value is still missing (???) from it
    return "custom" if "_target_" in keys else "timm" if "type" in keys else "resattn"


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def timm_version() -> str:
    import timm

    return timm.__version__


@functools.cache
def timm_names() -> tuple[str, ...]:
    """The type names timm's attention factory accepts, read from its source: `get_attn` is a chain of
    `attn_type == 'se'` tests, not a table."""
    from timm.layers import get_attn

    tree = ast.parse(textwrap.dedent(inspect.getsource(get_attn)))
    return tuple(
        dict.fromkeys(
            node.comparators[0].value
            for node in ast.walk(tree)
            if isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Name)
            and node.left.id == "attn_type"
            and isinstance(node.comparators[0], ast.Constant)
            and isinstance(node.comparators[0].value, str)
        )
    )


def timm_class(name: str):
    """The class (or partial of one) timm builds for type `name`, and its name as a class."""
    from timm.layers import get_attn

    built = get_attn(name)
    return built, getattr(built, "func", built).__name__


@functools.cache
def probe(name: str) -> str | None:
    """None when timm type `name`, built from the channel count alone, keeps the shape of every probe; else why not."""
    from timm.layers import create_attn

    with torch.random.fork_rng(devices=[]):  # the probes draw weights: the run's random numbers must not see it
        torch.manual_seed(0)
        for shape in PROBES:
            try:
                out = create_attn(name, shape[1])(torch.randn(shape))
            except Exception as err:  # whatever timm raises, the type does not qualify: say what
                return f"create_attn({name!r}, {shape[1]}) on {shape}: {one_line(err)}"
            if tuple(out.shape) != shape:
                return f"returns {tuple(out.shape)} for {shape}"
    return None


def timm_types() -> dict[str, str | None]:
    """Every timm attention type -> None when it qualifies, else why not (one line)."""
    return {name: probe(name) for name in timm_names()}


def qualifying_timm_types() -> list[str]:
    return [name for name, why in timm_types().items() if why is None]


def constructor_keys(cls, what: str, keys: Mapping) -> None:
    """ConfigError naming a key that `cls`'s signature has no place for (none when it takes **kwargs)."""
    try:
        params = list(inspect.signature(cls).parameters.values())[1:]  # the first is the channel count
    except (TypeError, ValueError):  # no signature to read (a builtin): the constructor itself will say
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    # device and dtype are resattn's to choose (trainer.device, trainer.precision), not a key of the module's
    names = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("device", "dtype")
    ]
    unknown = sorted(set(keys) - set(names))
    if unknown:
        raise ConfigError(f"attention.{unknown[0]} is not a key of {what}; it takes {', '.join(names) or 'none'}")


def check_timm(attention: Mapping) -> None:
    """ConfigError unless attention.type is a timm type that keeps its input's shape, taking the keys given."""
    name = attention["type"]
    if name not in timm_names():
        raise ConfigError(
            f"attention.type must be one of timm {timm_version()}'s attention types that keep their "
            f"input's shape: {', '.join(qualifying_timm_types())}; got {name!r}"
        )
    if probe(name) is not None:  # only the type asked for is probed, unless it fails: then all, to list them
        raise ConfigError(
            f"attention.type={name}: timm's {name} does not build from a channel count alone into a "
            f"module that keeps its input's shape ({probe(name)}); the types that do: "
            f"{', '.join(qualifying_timm_types())}"
        )
    cls, cls_name = timm_class(name)
    constructor_keys(cls, f"timm's {cls_name} (attention.type={name})", constructor_args(attention))


def locate(target) -> Callable:
    """The class (or function) attention._target_ names, imported as Hydra imports it."""
    from hydra.utils import get_object

    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"attention._target_ must be a dotted path package.module.Class, got {target!r}")
    try:
        found = get_object(target)
    except Exception as err:  # Hydra's message spans lines: its cause says it in one
        raise ConfigError(f"attention._target_={target}: cannot import it ({one_line(err.__cause__ or err)})") from None
    if not callable(found):
        raise ConfigError(f"attention._target_={target} is not a class: got {type(found).__name__}")
    return found


def check_custom(attention: Mapping) -> None:
    target = attention["_target_"]
    constructor_keys(locate(target), target, constructor_args(attention))


def check_config(attention) -> None:
    """ConfigError for a timm or custom attention config that cannot build (a DictConfig: missing values allowed)."""
    from omegaconf import OmegaConf

    kind = source(attention)
    key = "type" if kind == "timm" else "_target_"
    if OmegaConf.is_missing(attention, key):
        wanted = (
            f"one of {', '.join(qualifying_timm_types())}"
            if kind == "timm"
            else "package.module.Class, built as Class(channels, **keys)"
        )
        raise ConfigError(f"attention.{key} is required with attention={kind}: attention.{key}=... ({wanted})")
    plain = OmegaConf.to_container(attention, resolve=True)
    (check_timm if kind == "timm" else check_custom)(plain)


def constructor_args(attention: Mapping) -> dict:
    """The keys passed to the constructor: all but those saying which module it is (name, and type or _target_)."""
    which = {"name", "_target_" if source(attention) == "custom" else "type"}
    return {k: v for k, v in attention.items() if k not in which}


def built(make: Callable[[int], nn.Module], label: str, channels: int) -> nn.Module:
    """make(channels), any failure said in one line naming the module."""
    try:
        return make(channels)
    except Exception as err:  # a bad key value, or a module that cannot take this channel count
        raise ConfigError(
            f"attention {label}: building it for {channels} channels failed: {one_line(err.__cause__ or err)}"
        ) from None


def attention_factory(attention: Mapping) -> Callable[[int], nn.Module]:
    """The `channels -> module` factory for a resolved attention config of any source."""
    keys, kind = constructor_args(attention), source(attention)
    if kind == "resattn":
        return attention_layer(attention["name"], **keys)
    if kind == "timm":
        from timm.layers import create_attn

        make = functools.partial(create_attn, attention["type"], **keys)
    else:
        from hydra.utils import instantiate

        locate(attention["_target_"])
        # _partial_: Hydra gives Class with the keys bound; _convert_: lists and dicts as Python's own
        make = instantiate({"_target_": attention["_target_"], **keys}, _partial_=True, _convert_="all")
    return functools.partial(built, make, attention["name"])


def check_masks(masks, v: torch.Tensor) -> str | None:
    """What is wrong with masks(v)'s answer, or None."""
    if not isinstance(masks, dict) or not set(masks) <= set(MASK_SHAPES):
        shown = sorted(masks) if isinstance(masks, dict) else type(masks).__name__
        return (
            f"masks(v) must return a dict with {' and/or '.join(f'{k!r} {s}' for k, s in MASK_SHAPES.items())}, "
            f"got {shown}"
        )
    b, c, h, w = v.shape
    expected = {"channel": (b, c, 1, 1), "spatial": (b, 1)}
    for key, mask in masks.items():
        if (
            not isinstance(mask, torch.Tensor)
            or mask.ndim != 4
            or tuple(mask.shape[: len(expected[key])]) != expected[key]
            or (key == "channel" and mask.shape[2:] != (1, 1))
        ):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            return f"masks(v)[{key!r}] must be {MASK_SHAPES[key]} for v of shape {tuple(v.shape)}, got {shape}"
    return None


def contract_hook(label: str, block: str, module, args, out) -> None:
    v = args[0]
    if not isinstance(out, torch.Tensor) or out.shape != v.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"attention {label} ({type(module).__name__}) must return its input's shape: in {block} "
            f"it returned {got} for an input of {tuple(v.shape)}"
        )
    wrong = check_masks(module.masks(v), v) if hasattr(module, "masks") else None
    if wrong:
        raise ConfigError(f"attention {label} ({type(module).__name__}) in {block}: {wrong}")


@torch.no_grad()
def check_contract(model, label: str, channels_last: bool = False, image_shape=(3, 32, 32)) -> None:
    """Run a copy of the model (the model itself stays as built) on a batch of two images, in eval and in train
    mode, as channels-last tensors through a channels-last model when training will run so
    (trainer.channels_last: a module's .view() fails there); ConfigError, naming the module, the block, the mode
    and the shapes, where an attention module breaks the contract or fails."""
    import copy

    probe = copy.deepcopy(model)
    try:  # as training converts it (engine.prepare): a 5-D weight (timm's lambda) cannot be made channels-last
        probe = probe.to(memory_format=torch.channels_last) if channels_last else probe
    except RuntimeError as err:
        raise ConfigError(
            f"attention {label} cannot train channels-last ({one_line(err)}); give trainer.channels_last=false"
        ) from None
    where = {}
    for block, b in probe.blocks.items():
        if b.attn is not None:
            b.attn.register_forward_pre_hook(lambda *_, block=block: where.update(block=block))
            b.attn.register_forward_hook(functools.partial(contract_hook, label, block))
    for mode in ("eval", "train"):
        probe.train(mode == "train")
        try:
            with torch.random.fork_rng(devices=[]):
                x = torch.randn(2, *image_shape)
                probe(x.to(memory_format=torch.channels_last) if channels_last else x)
        except ConfigError:
            raise
        except Exception as err:
            place = f" in {where['block']}" if where else ""
            raise ConfigError(f"attention {label} fails{place} in {mode} mode: {one_line(err)}") from None


def check_stackable(model: nn.Module, label: str, image_shape=(3, 32, 32)) -> None:
    """ConfigError when torch.func.vmap cannot train two copies of `model` as stacked members (the fused
    launcher, resattn.members): a module that reads a value back (.item()) or changes a tensor in place."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    copies = [copy.deepcopy(model).train() for _ in range(2)]
    params, buffers = stack_module_state(copies)
    shell = copy.deepcopy(copies[0]).to("meta")
    step = vmap(lambda p, b, x: functional_call(shell, (p, b), (x,)), randomness="different")
    try:
        with torch.random.fork_rng(devices=[]):
            step(params, buffers, torch.randn(2, 2, *image_shape)).sum().backward()
    except Exception as err:
        raise ConfigError(
            f"hydra/launcher=fused cannot stack attention {label}: torch.func.vmap fails on it "
            f"({one_line(err)}); run it with hydra/launcher=basic or joblib"
        ) from None

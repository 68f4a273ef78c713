"""Command-line keys that no config has: refused before Hydra starts, with the closest real keys.

Hydra refuses `pattern.laminit=0.2` with six lines and advises `+pattern.laminit=0.2`, which it
then accepts and nothing reads. The real keys are those of the config the command line composes
(its group choices and preset), asked of Hydra's compose API; hydra.* keys are left to Hydra.
"""

import difflib

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from resattn.config import CONFIGS
from resattn.errors import ConfigError, flatten
from resattn.external import OPEN_ATTENTIONS


def _is_group(key: str) -> bool:
    return (CONFIGS / key).is_dir() and not key.startswith("hydra")


def _options(override) -> list[str]:
    if override.is_sweep_override():
        return list(override.sweep_string_iterator()) if override.is_discrete_sweep() else []
    return [override.get_value_element_as_str()]


def compose_config(choices: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=choices, return_hydra_config=True)


def composed_keys(choices: list[str]) -> set[str]:
    """Every key, leaves and the nodes above them, of the config composed with these group choices."""
    tree = OmegaConf.to_container(compose_config(choices), resolve=False)
    del tree["hydra"]
    leaves = flatten(tree)
    return {".".join(k.split(".")[:i]) for k in leaves for i in range(1, k.count(".") + 2)}


def unknown_key_message(key: str, known: set[str], choices: dict[str, str]) -> str:
    group = key.split(".")[0]
    if _is_group(group):  # attention.bias with attention=cbam: a key of another option
        owners = [
            p.stem
            for p in sorted((CONFIGS / group).glob("*.yaml"))
            if key in composed_keys([f"{g}={c}" for g, c in {**choices, group: p.stem}.items()])
        ]
        if owners:
            chosen = choices.get(group)
            if chosen is None:  # not on the command line: the group's default
                chosen = compose_config([f"{g}={c}" for g, c in choices.items()]).hydra.runtime.choices[group]
            return (
                f"unknown key {key} for {group}={chosen}; {', '.join(owners)} "
                f"{'has' if len(owners) == 1 else 'have'} it ({group}={owners[0]} {key}=...)"
            )
    leaves = [k for k in known if not any(other.startswith(k + ".") for other in known)]
    close = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "python -m train --cfg job lists every key"
    return f"unknown key {key}; {hint}"


def check_keys(args: list[str]) -> list[str]:
    """`args`, with `+key=` made `++key=` for a key the config has (Hydra refuses to add what exists);
    ConfigError for the first override (with or without +) of a key the composed config lacks.
    A swept group choice counts every option it sweeps."""
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return args  # a syntax error: Hydra's own message says where
    groups = {o.key_or_group: _options(o) for o in overrides if _is_group(o.key_or_group) and not o.is_delete()}
    checked = [
        (arg, o)
        for arg, o in zip(candidates, overrides)
        if not o.is_delete() and not _is_group(o.key_or_group) and not o.key_or_group.startswith("hydra")
    ]
    if not checked or any(not options for options in groups.values()):
        return args  # nothing to check, or a group swept by glob(): Hydra checks
    first = {g: options[0] for g, options in groups.items()}
    constructor = set()  # constructor keys of attention=timm or custom: added to the config, with or without +
    try:
        known = composed_keys([f"{g}={c}" for g, c in first.items()])
        for arg, override in checked:
            key = override.key_or_group
            # a key of another option of a swept group (attention=cbam,se attention.bias=false) is real too
            for group, options in groups.items():
                for option in options[1:] if key not in known else []:
                    known |= composed_keys([f"{g}={option if g == group else c}" for g, c in first.items()])
            if key not in known and takes_any_key(key, groups, first):
                constructor.add(arg)
            elif key not in known:
                raise ConfigError(unknown_key_message(key, known, first))
    except HydraException:
        return args  # a preset that does not compose: Hydra's own message says why
    added = {arg for arg, o in checked if o.is_add() and arg not in constructor}
    plain = {arg for arg, o in checked if not o.is_add() and arg in constructor}
    return [f"+{arg}" if arg in added | plain else arg for arg in args]


def takes_any_key(key: str, groups: dict[str, list[str]], first: dict[str, str]) -> bool:
    """Whether `key` is an attention.KEY the module's constructor takes: with attention=timm or custom (every
    option of a sweep), whose keys no config can list. The module's signature checks it when the run starts."""
    group = key.split(".")[0]
    if group != "attention":
        return False
    options = groups.get(group) or [compose_config([f"{g}={c}" for g, c in first.items()]).hydra.runtime.choices[group]]
    return all(option in OPEN_ATTENTIONS for option in options)

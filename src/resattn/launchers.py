"""The launcher, sweeper and output folder a command line asks for, checked before Hydra starts
(job.check_choices): Hydra refuses these only after making the sweep folder, with a screen of text, or
accepts what it then ignores.

- any launcher: a hydra.launcher key its config lacks, with the closest real one;
- hydra/launcher=joblib: n_jobs a non-zero integer;
- hydra/launcher=fused: n_jobs and max_members integers >= 1; a sweep (-m) to launch; no hydra.job.chdir
  (its members share one process and one working directory); the Optuna sweeper with it is tuning.py's;
- hydra.sweep.dir (hydra.run.dir for a single run): empty, the working folder or above it, a file in the way,
  or a place no folder can be made.
"""

import difflib
import os
import tempfile
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import OmegaConf

from resattn.build import FUSED_BF16
from resattn.errors import ConfigError, file_in_the_way
from resattn.keys import CONFIGS, compose_config

FUSED = "fused"
FUSED_SETTINGS = ("n_jobs", "max_members")  # hydra.launcher keys of FusedLauncherConf checked here


def check_fused_setting(key: str, value) -> None:
    """n_jobs and max_members of the fused launcher: integers >= 1 (FusedLauncher checks them again)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"hydra.launcher.{key} must be an integer >= 1, got {value!r}")


def hydra_group_options(group: str) -> list[str]:
    """The options Hydra knows for one of its own groups (hydra/launcher: basic, fused, joblib, ...): its
    plugins' configs and configs/hydra/<group>/."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return GlobalHydra.instance().config_loader().get_group_options(group)


def given(args: list[str]) -> dict[str, Override]:
    """key -> override for the key=value arguments; {} for a syntax error (Hydra's own message says where)."""
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        return {o.key_or_group: o for o in OverridesParser.create().parse_overrides(candidates)}
    except HydraException:
        return {}


def value(override: Override | None):
    """The value given, None for none or a sweep of values."""
    return None if override is None or override.is_sweep_override() else override.value()


def check_launching(args: list[str], multirun: bool) -> None:
    """ConfigError for the first thing Hydra would refuse late or ignore (the module's list)."""
    overrides = given(args)
    folder_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if folder_key in overrides:
        check_output_folder(folder_key, value(overrides[folder_key]))
    check_launcher_keys(overrides)
    n_jobs = overrides.get("hydra.launcher.n_jobs")
    if value(overrides.get("hydra/launcher")) == "joblib" and n_jobs is not None and not n_jobs.is_sweep_override():
        n = n_jobs.value()  # joblib: -1 every core, -2 all but one...; 0 fails only after the sweep has started
        if isinstance(n, bool) or not isinstance(n, int) or n == 0:
            raise ConfigError(f"hydra.launcher.n_jobs must be a non-zero integer (-1: every core), got {n!r}")
    if value(overrides.get("hydra/launcher")) == FUSED:
        check_fused(overrides, multirun)


def check_output_folder(key: str, folder) -> None:
    """The folder a run or sweep writes to: given (an unset shell variable leaves it empty), not the working
    folder or one above it (the sweep's report would read every run under it), and one that can be made."""
    if folder is None or str(folder).strip() == "":
        raise ConfigError(f"{key} is empty (an unset variable?): give the folder to write to")
    folder = str(folder)
    if "${" in folder:
        return  # resolved by Hydra (${now:...}): checked where it lands
    path, cwd = Path(folder).expanduser().resolve(), Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise ConfigError(
            f"{key}={folder} is the working folder or holds it; give a folder of its own (outputs/... by default)"
        )
    if file_in_the_way(path) is not None:
        raise ConfigError(f"{key}={folder}: {file_in_the_way(path)} is a file, not a folder; give a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:  # a probe where the folder would be made: read-only, pseudo (/proc, /sys) or forbidden places fail here
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".resattn-probe-"))
    except OSError as err:
        raise ConfigError(
            f"{key}={folder}: cannot make a folder in {existing} ({err.strerror}); give a writable folder"
        ) from None


def check_launcher_keys(overrides: dict[str, Override]) -> None:
    """Every hydra.launcher.KEY given is a key of the launcher's config (a nested one by its first part)."""
    names = [k.split(".")[2] for k in overrides if k.startswith("hydra.launcher.")]
    choices = [f"{k}={value(overrides.get(k))}" for k in ("hydra/launcher", "experiment") if value(overrides.get(k))]
    if not names:
        return
    try:  # the launcher a preset chooses counts too
        cfg = compose_config(choices)
    except HydraException:
        return  # a preset that does not compose: Hydra's own message says why
    launcher, known = cfg.hydra.runtime.choices["hydra/launcher"], list(OmegaConf.to_container(cfg.hydra.launcher))
    known = [k for k in known if k != "_target_"]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = (
                f"did you mean hydra.launcher.{close[0]}?"
                if close
                else f"its keys: {', '.join(known)}"
                if known
                else "it has no settings"
            )
            raise ConfigError(f"unknown key hydra.launcher.{name} for hydra/launcher={launcher}; {hint}")


def check_fused(overrides: dict[str, Override], multirun: bool) -> None:
    if not multirun:
        raise ConfigError(
            "hydra/launcher=fused launches the jobs of a sweep, and a single run has none: add -m "
            "(python -m train -m ...), or leave the launcher out"
        )
    for key in FUSED_SETTINGS:
        override = overrides.get(f"hydra.launcher.{key}")
        if override is not None:  # a sweep of settings is no setting: shown as written
            check_fused_setting(
                key, override.input_line.partition("=")[2] if override.is_sweep_override() else override.value()
            )
    if value(overrides.get("trainer.precision")) == "bf16":  # else every job fails as it starts, each leaving a folder
        raise ConfigError(FUSED_BF16)
    if value(overrides.get("hydra.job.chdir")) is True:
        raise ConfigError(
            "hydra.job.chdir=true does not work with hydra/launcher=fused: its members train in one "
            "process, which has one working directory; leave hydra.job.chdir out"
        )

"""Per-arm tuning with Optuna through Hydra's own sweeper (experiment=tune_lr, tune_lr_cpu; docs/sweeps.md), and
the comparison at the tuned rates (experiment=compare_tuned).

The sweeper reads the task function's return value as the trial's objective: with the config key
`objective` set (by a tuning preset), `python -m train` returns that summary key as a float, the run's
validation accuracy. A run that diverged returns DIVERGED, so the sampler learns that the region is bad;
a run that failed otherwise raises, and the sweeper records a failed trial (at max_failure_rate 0 the
study stops: a broken run is not a data point).
"""

import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from resattn.errors import ConfigError
from resattn.job import CONFIGS, config_roots

# presets that need hydra/sweeper=optuna: the primary config's own sweeper override would win over theirs
OPTUNA_PRESETS = ("tune_lr", "tune_lr_cpu")
OBJECTIVES = ("final_val_acc", "best_val_acc")  # tuned on the validation split, never on the test set
DIVERGED = 0.0  # the objective of a diverged run: below chance, so never the best
TUNED_GROUP = "tuned_lr"  # the config group of tuned rates, written by scripts/tuned_lr.py, swept by compare_tuned


def with_optuna_sweeper(args: list[str]) -> list[str]:
    """`args` with hydra/sweeper=optuna added when they ask for a tuning preset and name no sweeper."""

    def key_value(a: str) -> tuple[str, str]:
        key, _, value = a.partition("=")
        return key.lstrip("+~"), value

    overrides = [i for i, a in enumerate(args) if "=" in a and not a.startswith("-")]
    pairs = [key_value(args[i]) for i in overrides]
    if any(k == "hydra/sweeper" for k, _ in pairs) or not any(
        k == "experiment" and v in OPTUNA_PRESETS for k, v in pairs
    ):
        return args
    # just before the first override: Hydra's argparse takes the overrides only as one unbroken run, so an
    # option on either side (`-m ...`, `... --cfg hydra -p KEY`) must stay outside it
    first = overrides[0]
    return [*args[:first], "hydra/sweeper=optuna", *args[first:]]


def check_objective(cfg: DictConfig) -> str | None:
    """The summary key to return, None without one; ConfigError when it cannot be measured."""
    key = cfg.get("objective")
    if key is None:
        return None
    if key not in OBJECTIVES:
        raise ConfigError(
            f"objective must be one of {', '.join(OBJECTIVES)} (tuning never reads the test set), got {key!r}"
        )
    if not cfg.data.get("val_size"):
        raise ConfigError(f"objective {key} needs a validation split: set data.val_size (e.g. 5000)")
    return key


def objective_value(key: str, summary: dict | None, run_dir: Path) -> float:
    """The trial's value from the run's summary (None when the run did not complete)."""
    if summary is None:
        status = "failed"
        try:
            status = json.loads((Path(run_dir) / "summary.json").read_text()).get("status", status)
        except (OSError, ValueError):
            pass
        if status == "diverged":
            return DIVERGED
        raise RuntimeError(f"the run in {run_dir} failed (its summary says {status}); its log says why")
    value = summary.get(key)
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise RuntimeError(f"the run in {run_dir} has no {key} in its summary (got {value!r})")
    return float(value)


def check_tuning(cfg: DictConfig) -> None:
    """ConfigError for a tuning sweep that cannot give a result, from the sweep's composed config before its
    folder exists (SweepEnd.on_multirun_start): an objective without a validation split, or the Optuna sweeper
    without an objective to maximise or with the fused launcher."""
    key = check_objective(cfg)
    choices = cfg.hydra.runtime.choices
    if choices.get("hydra/sweeper") != "optuna":
        return
    if key is None:
        raise ConfigError(
            f"hydra/sweeper=optuna needs an objective to maximise: choose experiment="
            f"{' or '.join(OPTUNA_PRESETS)} (objective: validation accuracy)"
        )
    if choices.get("hydra/launcher") == "fused":
        raise ConfigError(
            "hydra/launcher=fused cannot run the Optuna sweeper's trials (each trial's lr is chosen "
            "after the ones before): tune with the basic launcher (the default) or hydra/launcher=joblib"
        )


def check_tuned_rates(args: list[str]) -> None:
    """ConfigError, before Hydra starts, when a preset sweeps arms of the tuned_lr group (experiment=compare_tuned)
    that no folder Hydra searches has: the rates come from scripts/tuned_lr.py, which says what to run."""
    if any(a.lstrip("+").startswith(f"{TUNED_GROUP}=") for a in args):
        return  # arms named on the command line: job.check_choices knows them
    presets = [a.partition("=")[2] for a in args if a.lstrip("+").startswith("experiment=")]
    preset = CONFIGS / "experiment" / f"{presets[-1] if presets else ''}.yaml"
    roots = config_roots(args)
    if not preset.is_file() or roots is None:  # no preset, or a pkg:// search path only Hydra can list
        return
    arms = OmegaConf.select(OmegaConf.load(preset), f"hydra.sweeper.params.{TUNED_GROUP}")
    if not arms:
        return
    found = {p.stem: root for root in roots for p in sorted((root / TUNED_GROUP).glob("*.yaml"))}
    missing = [arm for arm in str(arms).split(",") if arm not in found]
    if not found:
        raise ConfigError(
            f"experiment={preset.stem} needs each arm's tuned rate and finds none: tune the arms first "
            f"(experiment=tune_lr or tune_lr_cpu), then scripts/tuned_lr.py on their studies writes "
            f"the rates and prints the command to run"
        )
    if missing:
        where = ", ".join(sorted({str(r / TUNED_GROUP) for r in found.values()}))
        raise ConfigError(
            f"experiment={preset.stem}: no tuned rate for {', '.join(missing)} in {where}: tune those "
            f"arms first, or compare the tuned ones: {TUNED_GROUP}={','.join(sorted(found))}"
        )

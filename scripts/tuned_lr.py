"""The best learning rate of each pattern, from the Optuna studies of experiment=tune_lr (or tune_lr_cpu).

    python scripts/tuned_lr.py outputs/sweeps/tune_lr_cpu            # every study under it
    python scripts/tuned_lr.py outputs/sweeps/tune_lr/p1/2026-12-02_10-00-00 ... --table-dir RATES

Each study folder holds Optuna's optimization_results.yaml (best_params, best_value) and its trials' folders
(each with Hydra's .hydra/config.yaml and hydra.yaml: the recipe, the pattern, the tuned keys). Written:
  - tuned_lr.csv and tuned_lr.md (--table-dir, default: the first path): one row per pattern, its best lr
    (and any other tuned key), the best validation accuracy, trials, diverged trials and the study folder;
  - <table-dir>/tuned_lr/<pattern>.yaml: the pattern and its tuned values, the options of the config group
    that experiment=compare_tuned sweeps. They stay outside the project's configs/: Hydra finds them through
    hydra.searchpath=[file://<table-dir>], and the script prints the whole command to run next (with the
    recipe the arms were tuned at).
A pattern tuned in several studies takes its newest (the folders' names are their start times); the others
are listed in a note. Studies whose experiments differ (resattn.identity: anything but the pattern, the keys
the sweeper tuned and the seed) are refused: their rates are not comparable.
"""

import argparse
import csv
import functools
import json
import re
import shlex
import sys
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from resattn.errors import flatten
from resattn.identity import DATA_ROOT, defines_the_experiment, first_difference, recorded
from resattn.job import usage_error
from resattn.tracking import read_summary
from resattn.tuning import TUNED_GROUP

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# What the studies of one table may differ in: the arm (its pattern config) and the seed; the keys the sweeper
# tuned (its params: optim.lr) are set aside per study; the sweeper itself is under hydra, never the experiment.
ARM_KEYS = ("pattern", "seed")
# What experiment=compare_tuned changes from the tuning: every training image trains (no validation split), and
# the run returns no objective.
COMPARISON_CHANGES = ("objective", "data.val_size")


def shown(path: Path) -> Path:
    """The path as the command line would give it: relative to the current folder when under it."""
    path = path.resolve()
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def load(path: Path, what: str) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OSError, ValueError, yaml.YAMLError) as err:
        usage_error(
            f"{shown(path)}: unreadable {what} ({str(err).splitlines()[0]}); rerun the study or leave its folder out"
        )
    if not isinstance(cfg, DictConfig):
        usage_error(f"{shown(path)}: unreadable {what} (not a mapping); rerun the study or leave its folder out")
    return cfg


def best_of(results: Path) -> tuple[dict, float]:
    """Optuna's best parameters (key -> value) and best value, from optimization_results.yaml."""
    best = load(results, "Optuna result")
    params, value = best.get("best_params"), best.get("best_value")
    if not isinstance(params, DictConfig) or not params or not isinstance(value, (int, float)):
        usage_error(
            f"{shown(results)}: unreadable Optuna result (needs best_params and a numeric best_value); "
            "rerun the study or leave its folder out"
        )
    return OmegaConf.to_container(params), float(value)


def read_study(results: Path) -> dict:
    """One study: its pattern, best parameters and value, its trials' outcomes, its config (flattened, hydra
    aside), what its trials resolved (identity.recorded), its group choices and the keys it tuned."""
    folder = results.parent
    trial = next(iter(sorted(folder.glob("*/.hydra/config.yaml"))), None)
    if trial is None:
        usage_error(f"{shown(folder)} has no trial folder (*/.hydra/config.yaml): which recipe did it tune?")
    config = load(trial, "trial config")
    hydra = load(trial.parent / "hydra.yaml", "trial config").get("hydra") or OmegaConf.create({})
    params, value = best_of(results)
    swept = OmegaConf.select(hydra, "sweeper.params")  # nested when given as hydra.sweeper.params.optim.lr
    # an unreadable trial still counts as a trial
    summaries = [
        s if isinstance(s := read_summary(p.parent), dict) else {} for p in sorted(folder.glob("*/summary.json"))
    ]
    return {
        "pattern": OmegaConf.select(config, "pattern.name"),
        "params": params,
        "value": value,
        "trials": len(summaries),
        "diverged": sum(s.get("status") == "diverged" for s in summaries),
        "tree": OmegaConf.to_container(config),
        "config": flatten(OmegaConf.to_container(config)),
        "resolved": next((recorded(s) for s in summaries if recorded(s)), {}),
        "choices": dict(OmegaConf.select(hydra, "runtime.choices") or {}),
        "tuned": sorted({*params, *flatten(OmegaConf.to_container(swept) if swept else {})}),
        "folder": shown(folder),
    }


def under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def recipe(study: dict) -> dict:
    """What the study's rates were tuned on: its config with what its trials resolved (the precision, the data's
    fingerprint), less the arm, the seed and the keys it tuned."""
    values = {**study["config"], **study["resolved"]}
    return {k: v for k, v in values.items() if not under(k, (*ARM_KEYS, *study["tuned"]))}


def check_one_recipe(studies: list[dict]) -> None:
    """One line naming two studies and the first key that defines the experiment on which they differ."""
    first = studies[0]
    for other in studies[1:]:
        if other["tuned"] != first["tuned"]:
            usage_error(
                f"{first['folder']} tuned {', '.join(first['tuned'])} and {other['folder']} tuned "
                f"{', '.join(other['tuned'])}: their rates are not comparable"
            )
        ours, theirs = recipe(first), recipe(other)
        key = first_difference(ours, theirs)
        if key is not None:
            usage_error(
                f"{first['folder']} and {other['folder']} tuned different recipes: {key}="
                f"{override_value(ours.get(key))} and {key}={override_value(theirs.get(key))}: their rates "
                "are not comparable; tune every arm at one recipe"
            )


def collect(paths: list[Path]) -> tuple[list[dict], list[str]]:
    found = sorted(
        {
            p.resolve()
            for path in paths
            for p in ([path] if path.name == "optimization_results.yaml" else path.rglob("optimization_results.yaml"))
        }
    )
    if not found:
        usage_error(f"no optimization_results.yaml under {', '.join(map(str, paths))}")
    studies, notes = {}, []
    for study in sorted((read_study(p) for p in found), key=lambda s: s["folder"].name):
        if study["pattern"] in studies:
            notes.append(
                f"{study['pattern']}: {studies[study['pattern']]['folder']} left out, {study['folder']} is newer"
            )
        studies[study["pattern"]] = study
    studies = sorted(studies.values(), key=lambda s: s["pattern"])
    check_one_recipe(studies)
    return studies, notes


def fmt(x: float) -> str:
    return f"{x:.4g}"


def write_table(studies: list[dict], notes: list[str], command: str, out: Path) -> None:
    keys = list(dict.fromkeys(k for s in studies for k in s["params"]))
    header = ["pattern", *[f"best {k}" for k in keys], "best val acc", "trials", "diverged", "study"]
    rows = [
        [
            s["pattern"],
            *[fmt(s["params"][k]) if k in s["params"] else "" for k in keys],
            f"{s['value']:.4f}",
            s["trials"],
            s["diverged"],
            str(s["folder"]),
        ]
        for s in studies
    ]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tuned_lr.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    config = studies[0]["config"]
    md = [
        "# Tuned learning rate per pattern",
        "",
        f"Every study tuned {', '.join(studies[0]['tuned'])} on {config.get('objective')} "
        f"(data.val_size={config.get('data.val_size')} training images held out), at the recipe that this "
        "comparison of the arms at their tuned rates runs:",
        "",
        f"    {command}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
        "",
    ]
    md += [f"- note: {n}" for n in notes] + ([""] if notes else [])
    (out / "tuned_lr.md").write_text("\n".join(md))


def write_configs(studies: list[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in studies:
        values = OmegaConf.create({})
        for key, value in s["params"].items():
            OmegaConf.update(values, key, float(fmt(value)) if isinstance(value, float) else value)
        text = (
            f"# @package _global_\n# Written by scripts/tuned_lr.py from {s['folder']}:\n"
            f"# the best of {s['trials']} trials, {s['config'].get('objective') or 'objective'} {s['value']:.4f}\n"
            f"defaults:\n  - override /pattern: {s['pattern']}\n\n" + OmegaConf.to_yaml(values)
        )
        path = out / f"{s['pattern']}.yaml"
        path.write_text(text)
        written.append(path)
    return written


def override_value(value) -> str:
    """A value as a Hydra override writes it: null, true, numbers and plain words as they are, lists in brackets,
    any other string quoted (so that "1" or a path with a comma stays one string)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(map(override_value, value)) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_/.~][\w/.~:+-]*", text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def search_path(root: Path) -> str:
    return f"hydra.searchpath=[{override_value(f'file://{root}')}]"


def compare_config(search_root: Path, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose(
            "config",
            return_hydra_config=True,
            overrides=["experiment=compare_tuned", search_path(search_root.resolve()), *overrides],
        )


def recipe_overrides(study: dict, base: DictConfig, compose_with) -> list[str]:
    """The overrides that give experiment=compare_tuned (`base`, composed by `compose_with(overrides)`) the recipe
    the study tuned at: its group choices, then every key that defines the experiment where the two still differ,
    and data.root (not the experiment, but the comparison must find the same images)."""
    groups = [
        f"{g}={c}"
        for g, c in study["choices"].items()
        if not g.startswith("hydra")
        and c is not None
        and g not in ("pattern", "experiment", TUNED_GROUP)
        and base.hydra.runtime.choices.get(g) != c
    ]
    tree = OmegaConf.to_container(compose_with(groups))
    del tree["hydra"]
    ours, theirs = flatten(tree), study["config"]
    keys = [
        k
        for k in theirs
        if k in ours
        and ours[k] != theirs[k]
        and not under(k, COMPARISON_CHANGES)
        and not under(k, (*ARM_KEYS, *study["tuned"]))
        and (defines_the_experiment(k) or k == DATA_ROOT)
    ]
    # the value as the study's config holds it (a list is a list, not the JSON text flatten makes of it)
    return groups + [f"{k}={override_value(functools.reduce(dict.get, k.split('.'), study['tree']))}" for k in keys]


def next_command(studies: list[dict], configs: Path) -> str:
    """The command that compares the arms at their tuned rates, at the recipe they were tuned at."""
    arms = [s["pattern"] for s in studies]

    def compose_with(overrides: list[str]) -> DictConfig:
        return compare_config(configs.parent, [f"{TUNED_GROUP}={arms[0]}", *overrides])

    base = compose_with([])
    overrides = recipe_overrides(studies[0], base, compose_with)
    if sorted(arms) != sorted(str(base.hydra.sweeper.params[TUNED_GROUP]).split(",")):
        overrides.insert(0, f"{TUNED_GROUP}={','.join(arms)}")
    args = ["python", "-m", "train", "-m", "experiment=compare_tuned", search_path(shown(configs.parent)), *overrides]
    return " ".join(map(shlex.quote, args))


def configs_folder(args, table_dir: Path) -> Path:
    """Where the <pattern>.yaml go: <table-dir>/tuned_lr unless --configs says; never inside the project's configs/
    (a checkout's configs are what the tests compose: a study's rates there would change them)."""
    configs = args.configs or table_dir / TUNED_GROUP
    if configs.name != TUNED_GROUP:
        usage_error(
            f"--configs {configs}: the folder must be named {TUNED_GROUP} (the config group compare_tuned "
            f"sweeps; Hydra finds DIR/{TUNED_GROUP}/<pattern>.yaml through hydra.searchpath=[file://DIR])"
        )
    if configs.resolve().is_relative_to(CONFIGS):
        usage_error(
            f"--configs {configs}: inside the project's configs/, whose options the tests compose; leave "
            f"--configs out (the rates go beside the table, {table_dir / TUNED_GROUP})"
        )
    for folder in (table_dir, configs):
        if folder.exists() and not folder.is_dir():
            usage_error(f"{folder} is a file; the table and the rates need a folder")
    return configs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="study folders, or folders above them")
    parser.add_argument("--table-dir", type=Path, help="where tuned_lr.csv/.md go (default: the first path)")
    parser.add_argument(
        "--configs",
        type=Path,
        help=f"where <pattern>.yaml go, a folder named {TUNED_GROUP} (default: TABLE_DIR/{TUNED_GROUP})",
    )
    args = parser.parse_args(argv)
    first = args.paths[0]
    table_dir = args.table_dir or (first.parent if first.is_file() else first)
    configs = configs_folder(args, table_dir)
    studies, notes = collect(args.paths)
    written = write_configs(studies, configs)
    command = next_command(studies, configs)
    write_table(studies, notes, command, table_dir)
    print((table_dir / "tuned_lr.md").read_text())
    print(
        f"wrote {table_dir / 'tuned_lr.csv'} and {len(written)} configs in {configs}; compare the arms at their "
        f"tuned rates with:\n{command}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

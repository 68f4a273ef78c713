"""Finding and reading runs, and putting them in groups: one group per config, seeds aside.

Only runs whose summary says "completed" are averaged. Diverged runs are data too (at a high learning
rate divergence is the result): they are counted in their group, never averaged. Failed, interrupted
and unfinished runs, and folders that cannot be read, are listed with their status and reason only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from tensorboard.backend.event_processing import event_accumulator

from resattn import identity
from resattn.errors import flatten
from resattn.identity import REPLICATE_KEY

ACC_METRICS = ("best_test_acc", "final_test_acc")
# on the validation split (data.val_size), in runs that held one out: reported where any run has them
VAL_METRICS = ("best_val_acc", "final_val_acc")
# each best-over-epochs metric and the final one it repeats where accuracy never fell from its peak
FINAL_OF_BEST = {"best_test_acc": "final_test_acc", "best_val_acc": "final_val_acc"}
# What is one experiment is identity.py's (the list checkpoint refusal uses too); the seed (REPLICATE_KEY) is
# set aside here: the seeds of one experiment are its replicates, the groups' n.
# summary.json keys holding {block: value}, reported as one metric per block: <prefix><block>
BLOCK_METRICS = {"final_lambda": "final_lambda_", "lam_travel": "lam_travel_"}


class ReportError(ValueError):
    """Nothing to report on, or a reference that names no group: said to the user, not a traceback."""


@dataclass(eq=False)  # a run is itself, not its fields
class Run:
    path: Path
    status: str  # summary.json's status; "missing" without one, "unreadable" when it or the rest can't be read
    error: str = ""
    summary: dict = field(default_factory=dict)
    # flattened, resolved .hydra/config.yaml, with what summary.json says the run resolved (identity.recorded:
    # the precision it ran in, its data's fingerprint) under trainer.precision and data.fingerprint
    config: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # TensorBoard tag -> [(step, value)]: acc/test, acc/val, lambda/*
    label: str = ""  # the group it belongs to, filled in by group_runs

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def metric(self, name: str) -> float | None:
        for key, prefix in BLOCK_METRICS.items():
            if name.startswith(prefix):
                return (self.summary.get(key) or {}).get(name.removeprefix(prefix))
        value = self.summary.get(name)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def find_run_dirs(paths) -> list[Path]:
    """Every folder holding .hydra/ or summary.json under the given paths, each once."""
    found: dict[Path, Path] = {}
    for root in map(Path, paths):
        if not root.is_dir():
            raise ReportError(f"{root}: no such folder")
        for dirpath, dirnames, filenames in os.walk(root):
            if ".hydra" in dirnames or "summary.json" in filenames:
                found.setdefault(Path(dirpath).resolve(), Path(dirpath))
                dirnames.clear()  # a run folder holds no runs
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found.values())


def read_config(run_dir: Path) -> dict:
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} resolves only inside a Hydra app: compare the text instead
        tree = OmegaConf.to_container(cfg, resolve=False)
    return flatten(tree)


def read_curves(run_dir: Path) -> dict:
    """Test accuracy and λ per step, through TensorBoard's own reader (it also drops purged steps of resumed runs)."""
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
    tb_log = logging.getLogger("tensorboard")
    level = tb_log.level
    tb_log.setLevel(logging.WARNING)  # inside a Hydra app its INFO lines ("No path found after ...") are noise
    try:
        acc.Reload()
    finally:
        tb_log.setLevel(level)
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
        if tag in ("acc/test", "acc/val") or tag.startswith("lambda/")
    }


def fill_summary(run: Run) -> bool:
    """Fill in run.summary, status and error; False when there is no usable summary."""
    try:
        run.summary = json.loads((run.path / "summary.json").read_text())
    except FileNotFoundError:
        run.error = "no summary.json (not started, still starting, or killed before its first epoch ended)"
        return False
    except (OSError, ValueError) as err:
        run.status, run.error = "unreadable", f"summary.json: {err}"
        return False
    if not isinstance(run.summary, dict):
        run.summary, run.status, run.error = {}, "unreadable", "summary.json: not a JSON object"
        return False
    run.status = str(run.summary.get("status", "unknown"))
    if run.config:  # a run without a readable config is in no group anyway
        run.config.update(identity.recorded(run.summary))
    run.error = str(run.summary.get("error") or "").strip().split("\n")[0]
    if run.status in ("running", "interrupted"):
        reason = run.summary.get("stop_reason") or run.summary.get("signal")  # signal: runs of older versions
        signal = f" by {reason}" if reason else ""
        run.error = run.error or (
            f"stopped{signal} after {run.summary.get('epochs_completed', '?')}/{run.summary.get('epochs', '?')} epochs"
        )
    return True


def read_run(run_dir: Path) -> Run:
    """A run with its status; anything that keeps a completed run from being averaged makes it "unreadable"."""
    run = Run(run_dir, "missing")
    config_error = ""
    try:  # read first, so that even a run with a broken summary is shown in its group
        run.config = read_config(run_dir)
    except Exception as err:
        config_error = f".hydra/config.yaml: {type(err).__name__}: {err}"
    if not fill_summary(run) or not (run.ok or run.diverged):
        return run
    # best_test_acc is absent with a validation split (the test set is read at the end only)
    needed = ("final_test_acc", "wall_time_s") if run.ok else ()
    missing = [k for k in (*needed, "seed") if not isinstance(run.summary.get(k), (int, float))]
    if config_error or missing:  # without its config or seed a run can't be put in a group
        run.status, run.error = "unreadable", config_error or f"summary.json lacks {', '.join(missing)}"
        return run
    if run.diverged:
        return run
    try:
        run.curves = read_curves(run_dir)
    except Exception as err:
        run.status, run.error = "unreadable", f"TensorBoard events: {type(err).__name__}: {err}"
        return run
    if "acc/test" not in run.curves:
        run.status, run.error = "unreadable", "no TensorBoard events with acc/test"
    return run


# ---------------------------------------------------------------- grouping


def experiment(run: Run) -> dict:
    """The values that make the run's experiment (identity.experiment), its seed aside."""
    out = identity.experiment(run.config)
    out.pop(REPLICATE_KEY, None)
    return out


def grouping_keys(runs: list[Run]) -> list[str]:
    """The keys that differ between the runs' experiments (identity.py): config keys, the precision the runs
    resolved and their data's fingerprint (or data.root where a run has none); seeds aside.

    Every key in which two groups differ is kept, so that nothing changed together with another key hides
    behind it (optim.lr and trainer.epochs changed together are both named). The one exception is a key of a
    config group whose choice is kept, where the choice sets it (pattern.placement by pattern.name,
    attention.reduction by attention.name): it is part of what the choice names, and would only lengthen labels."""
    configs = [experiment(r) for r in runs if r.config]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    varying = [k for k in keys if len({c.get(k) for c in configs}) > 1]
    return [k for k in varying if not set_by_choice(k, varying, configs)]


def set_by_choice(key: str, varying: list[str], configs: list[dict]) -> bool:
    """Whether `key` belongs to a config group whose choice varies too (pattern.placement: pattern.name) and
    takes one value per choice."""
    choice = f"{key.split('.')[0]}.name"
    if key == choice or choice not in varying:
        return False
    seen: dict = {}
    return all(seen.setdefault(c.get(choice), c.get(key)) == c.get(key) for c in configs)


def short(key: str) -> str:
    """pattern.name -> pattern, as it is written on the command line."""
    return key.removesuffix(".name")


def fmt_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # true/false/null, as in YAML and on the command line
    return f"{value:g}" if isinstance(value, float) else str(value)


def group_label(config: dict, keys: list[str]) -> str:
    return ", ".join(f"{short(k)}={fmt_value(config.get(k))}" for k in keys) or "all runs"


def sort_key(values: tuple) -> tuple:
    # numbers in numeric order (lam_init 0.05 before 0.1), text alphabetically
    return tuple(
        (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v)) for v in values
    )


@dataclass(eq=False)  # `group in refs` means this very group
class Group:
    label: str
    values: tuple  # of the grouping keys
    runs: list = field(default_factory=list)  # completed runs: the ones averaged
    diverged: list = field(default_factory=list)  # diverged runs: counted, never averaged
    twins: list = field(default_factory=list)  # (run kept, run left out): a seed found twice, counted once

    @property
    def config(self) -> dict:
        return (self.runs or self.diverged)[0].config

    @property
    def summary(self) -> dict:
        return (self.runs or self.diverged)[0].summary

    def seeds(self) -> list:
        return sorted(r.summary["seed"] for r in self.runs)

    def diverged_seeds(self) -> list:
        return sorted(r.summary["seed"] for r in self.diverged)


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """One group per experiment. A seed found twice in a group (a job run again into another folder, a folder
    copied) is counted once: the completed run before a diverged one, then the first path; the other is a twin."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        if run.config:
            run.label = group_label(experiment(run), keys)
    for run in sorted(runs, key=lambda r: not r.ok):  # stable: completed first, each in path order
        if run.ok or run.diverged:
            values = tuple(experiment(run).get(k) for k in keys)
            group = groups.setdefault(values, Group(run.label, values))
            kept = next(
                (r for r in (*group.runs, *group.diverged) if r.summary[REPLICATE_KEY] == run.summary[REPLICATE_KEY]),
                None,
            )
            if kept is not None:
                group.twins.append((kept, run))
            else:
                (group.runs if run.ok else group.diverged).append(run)
    return sorted(groups.values(), key=lambda g: sort_key(g.values))


def group_notes(groups: list[Group]) -> list[str]:
    """One line per group that pools runs from several devices, torch versions or compile modes (their numbers
    may differ in the last bits, not in what was run), and per seed counted once though found twice."""
    notes = []
    for g in groups:
        mixed = identity.placements([r.summary for r in (*g.runs, *g.diverged)])
        if mixed:
            notes.append(
                f"{g.label}: pools runs with different "
                + "; ".join(f"{key} ({', '.join(map(str, values))})" for key, values in mixed.items())
            )
        for kept, twin in g.twins:
            notes.append(
                f"{g.label}: seed {kept.summary[REPLICATE_KEY]} found twice, counted once: {kept.path} "
                f"({kept.status}) kept, {twin.path} ({twin.status}) left out"
            )
    return notes


def block_names(groups: list[Group], key: str) -> list[str]:
    """The blocks named in summary[key] ({block: value}), in the network's forward order as the runs wrote them."""
    return list(dict.fromkeys(b for g in groups for r in g.runs for b in r.summary.get(key) or {}))


def metric_names(groups: list[Group]) -> list[str]:
    """Accuracy metrics, validation accuracies and robust accuracy where measured, then λ per block, then wall
    time; absent ones left out."""
    robust = any(r.metric("robust_acc") is not None for g in groups for r in g.runs)
    val = [m for m in VAL_METRICS if any(r.metric(m) is not None for g in groups for r in g.runs)]
    acc = [
        m for m in ACC_METRICS if m == "final_test_acc" or any(r.metric(m) is not None for g in groups for r in g.runs)
    ]
    blocks = {key: [prefix + b for b in block_names(groups, key)] for key, prefix in BLOCK_METRICS.items()}
    return [
        *acc,
        *val,
        *(["robust_acc"] if robust else []),
        *blocks["final_lambda"],
        *blocks["lam_travel"],
        "wall_time_s",
    ]


def best_as_final(groups: list[Group], metrics: list[str]) -> list[str]:
    """The best-over-epochs metrics equal to their final one in every completed run (no run scored higher at
    an earlier epoch, as when accuracy rose every epoch): their columns and comparisons would repeat the final's."""
    runs = [r for g in groups for r in g.runs]
    return [
        best
        for best, final in FINAL_OF_BEST.items()
        if best in metrics and runs and all(r.metric(best) == r.metric(final) for r in runs)
    ]

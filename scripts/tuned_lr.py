"""The best learning rate of each pattern, from the Optuna studies of experiment=tune_lr (or tune_lr_cpu).

    python scripts/tuned_lr.py outputs/sweeps/tune_lr                 # every study under it
    python scripts/tuned_lr.py outputs/sweeps/tune_lr/p1/2026-12-02_10-00-00 ... --configs configs/tuned_lr

Each study folder holds Optuna's optimization_results.yaml (best_params, best_value) and Hydra's
multirun.yaml (its config: the pattern). Written:
  - tuned_lr.csv and tuned_lr.md (--table-dir, default: the first path): one row per pattern, its best lr
    (and any other tuned key), the best validation accuracy, trials, diverged trials and the study folder;
  - configs/tuned_lr/<pattern>.yaml (--configs): the pattern and its tuned values, the options of the
    config group that experiment=compare_tuned sweeps (`python -m train -m experiment=compare_tuned`).
A pattern tuned in several studies takes its newest (the folders' names are their start times); the others
are listed in a note. Studies whose recipes differ (model, width, epochs, data sizes) are refused: their
rates are not comparable.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
# the recipe keys a study's lr depends on: every study in one table must share them
RECIPE_KEYS = ("model.name", "model.width", "model.depth", "attention.name", "data.name", "data.train_size",
               "data.val_size", "trainer.epochs", "trainer.batch_size", "optim.schedule", "objective")


def select(cfg, key: str):
    return OmegaConf.select(cfg, key, default=None)


def read_study(results: Path) -> dict:
    """One study: its pattern, best parameters and value, its trials' outcomes and its recipe."""
    folder = results.parent
    if folder.is_relative_to(Path.cwd()):  # the table and configs name it as the command line would
        folder = folder.relative_to(Path.cwd())
    best = OmegaConf.load(results)
    config_file = folder / "multirun.yaml"
    if not config_file.exists():  # an older Hydra: a trial's own config
        config_file = next(folder.glob("*/.hydra/config.yaml"), None)
        if config_file is None:
            raise SystemExit(f"error: {folder} has no multirun.yaml and no trial folder: which pattern is it?")
    cfg = OmegaConf.load(config_file)
    summaries = [json.loads(p.read_text()) for p in sorted(folder.glob("*/summary.json"))]
    return {
        "pattern": select(cfg, "pattern.name"),
        "params": dict(best.best_params),
        "value": float(best.best_value),
        "trials": len(summaries),
        "diverged": sum(s.get("status") == "diverged" for s in summaries),
        "recipe": {k: select(cfg, k) for k in RECIPE_KEYS},
        "folder": folder,
    }


def collect(paths: list[Path]) -> tuple[list[dict], list[str]]:
    found = sorted({p.resolve() for path in paths for p in
                    ([path] if path.name == "optimization_results.yaml" else path.rglob("optimization_results.yaml"))})
    if not found:
        raise SystemExit(f"error: no optimization_results.yaml under {', '.join(map(str, paths))}")
    studies, notes = {}, []
    for study in sorted((read_study(p) for p in found), key=lambda s: s["folder"].name):
        if study["pattern"] in studies:
            notes.append(f"{study['pattern']}: {studies[study['pattern']]['folder']} left out, "
                         f"{study['folder']} is newer")
        studies[study["pattern"]] = study
    recipes = {json.dumps(s["recipe"], sort_keys=True, default=str) for s in studies.values()}
    if len(recipes) > 1:
        lines = "\n".join(f"  {s['pattern']}: {s['recipe']}" for s in studies.values())
        raise SystemExit(f"error: the studies tuned different recipes; their rates are not comparable:\n{lines}")
    return sorted(studies.values(), key=lambda s: s["pattern"]), notes


def fmt(x: float) -> str:
    return f"{x:.4g}"


def write_table(studies: list[dict], notes: list[str], out: Path) -> None:
    keys = list(dict.fromkeys(k for s in studies for k in s["params"]))
    header = ["pattern", *[f"best {k}" for k in keys], "best val acc", "trials", "diverged", "study"]
    rows = [[s["pattern"], *[fmt(s["params"][k]) if k in s["params"] else "" for k in keys], f"{s['value']:.4f}",
             s["trials"], s["diverged"], str(s["folder"])] for s in studies]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tuned_lr.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    recipe = ", ".join(f"{k}={v}" for k, v in studies[0]["recipe"].items() if v is not None)
    md = ["# Tuned learning rate per pattern", "", f"Recipe of every study: {recipe}.", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(map(str, r)) + " |" for r in rows), ""]
    md += [f"- note: {n}" for n in notes] + ([""] if notes else [])
    (out / "tuned_lr.md").write_text("\n".join(md))


def write_configs(studies: list[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in studies:
        values = OmegaConf.create({})
        for key, value in s["params"].items():
            OmegaConf.update(values, key, float(fmt(value)) if isinstance(value, float) else value)
        text = (f"# @package _global_\n# Written by scripts/tuned_lr.py from {s['folder']}:\n"
                f"# the best of {s['trials']} trials, {s['recipe']['objective'] or 'objective'} {s['value']:.4f}\n"
                f"defaults:\n  - override /pattern: {s['pattern']}\n\n" + OmegaConf.to_yaml(values))
        path = out / f"{s['pattern']}.yaml"
        path.write_text(text)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="study folders, or folders above them")
    parser.add_argument("--table-dir", type=Path, help="where tuned_lr.csv/.md go (default: the first path)")
    parser.add_argument("--configs", type=Path, default=ROOT / "configs" / "tuned_lr",
                        help="where <pattern>.yaml go (default: configs/tuned_lr, what compare_tuned reads)")
    args = parser.parse_args(argv)
    studies, notes = collect(args.paths)
    table_dir = args.table_dir or args.paths[0]
    write_table(studies, notes, table_dir)
    written = write_configs(studies, args.configs)
    print((table_dir / "tuned_lr.md").read_text())
    print(f"wrote {table_dir / 'tuned_lr.csv'} and {len(written)} configs in {args.configs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

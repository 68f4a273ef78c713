"""Every experiment preset composes and validates, job by job; every `python -m train` command of the README
composes as `python -m train` would run it (its sweep expanded as the basic sweeper expands it); the smoke preset
is the tests' tiny run, and the README's smoke command trains."""

import json
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import ROOT, TINY, run_train
from resattn.config import validate
from resattn.job import check_choices
from resattn.keys import check_keys
from resattn.tuning import with_optuna_sweeper

CONFIGS = ROOT / "configs"
PRESETS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
PATTERNS = sorted(p.stem for p in (CONFIGS / "pattern").glob("*.yaml"))


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory) -> Path:
    """A folder of tuned rates as scripts/tuned_lr.py writes them, for experiment=compare_tuned."""
    root = tmp_path_factory.mktemp("tuned")
    (root / "tuned_lr").mkdir()
    for i, p in enumerate(PATTERNS):
        (root / "tuned_lr" / f"{p}.yaml").write_text(
            f"# @package _global_\ndefaults:\n  - override /pattern: {p}\n\noptim:\n  lr: {0.1 * (i + 1):.1f}\n"
        )
    return root


def compose_command(args: list[str]) -> list:
    """The configs `python -m train ARGS` would run: the argument checks train.py makes before Hydra
    (check_choices, check_keys, the Optuna sweeper for a tuning preset), Hydra's own argument parser, the
    composition Hydra makes for the run mode, and for a basic (resattn) sweep every job, expanded as
    BasicSweeper.sweep expands it (the preset's params first, then the command line's overrides)."""
    check_choices(args)  # SystemExit(2) with the line a user would see
    args = check_keys(with_optuna_sweeper(args))
    parsed = get_args_parser().parse_args(args)
    overrides = parsed.overrides
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        hydra_ = GlobalHydra.instance().hydra
        # Hydra's own order (hydra._internal.hydra.Hydra.get_mode): -m, or the mode the composed config sets
        multirun = parsed.multirun or hydra_.get_mode("config", overrides) == RunMode.MULTIRUN
        cfg = hydra_.compose_config("config", overrides, run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
        if not multirun:
            return [cfg]
        if cfg.hydra.runtime.choices["hydra/sweeper"] == "optuna":  # trials are chosen as the study runs
            return [cfg]
        params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
        [batch] = BasicSweeper.split_arguments(
            OverridesParser.create().parse_overrides(params + overrides), max_batch_size=None
        )
        return [compose("config", overrides=job) for job in batch]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_every_job_validates(preset, tuned_dir):
    args = [f"experiment={preset}"]
    if preset == "compare_tuned":  # its arms come from a folder of tuned rates (docs/sweeps.md)
        args.append(f"hydra.searchpath=[file://{tuned_dir}]")
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        base = GlobalHydra.instance().hydra.compose_config(
            "config", with_optuna_sweeper(args), run_mode=RunMode.MULTIRUN
        )
    if OmegaConf.is_missing(base.data, "root"):  # data=folder presets: the images' folder is the user's
        args.append("data.root=/images")
    jobs = compose_command(args)
    assert jobs, preset
    for job in jobs:
        validate(job)
    sweep = OmegaConf.select(base, "hydra.sweeper.params") or {}
    if base.hydra.mode == RunMode.MULTIRUN and base.hydra.runtime.choices["hydra/sweeper"] != "optuna":
        grid = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweep.items()])
        [expected] = BasicSweeper.split_arguments(grid, max_batch_size=None)  # the preset's grid alone
        assert len(jobs) == len(expected) > 1, preset
        assert len({json.dumps(OmegaConf.to_container(j), sort_keys=True) for j in jobs}) == len(jobs)
    else:
        assert len(jobs) == 1


def test_the_smoke_preset_is_the_tests_tiny_run():
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        smoke = OmegaConf.to_container(compose("config", overrides=["experiment=smoke"]))
        tiny = OmegaConf.to_container(compose("config", overrides=TINY))
    assert smoke == tiny


def test_hydra_range_expands_seeds_and_two_dots_do_not():
    """The README's seed syntax: range(0,5) is seeds 0 to 4; 0..2 is one (invalid) value, not a range."""

    def seeds(arg):
        [batch] = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides([arg]), max_batch_size=None)
        return [job[0] for job in batch]

    assert seeds("seed=range(0,5)") == [f"seed={s}" for s in range(5)]
    assert seeds("seed=0..2") == ["seed=0..2"]


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced code block of a Markdown file."""
    blocks, lang, lines = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(lines)))
                lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, f"{path}: a code block is not closed"
    return blocks


def train_commands(path: Path) -> list[str]:
    """Every `python -m train ...` line of a Markdown file's shell blocks, continuation lines joined."""
    commands = []
    for lang, text in code_blocks(path):
        if lang in ("", "bash", "sh"):
            commands += [
                line.strip()
                for line in text.replace("\\\n", " ").splitlines()
                if line.strip().startswith("python -m train")
            ]
    return commands


def readme_commands() -> list[str]:
    return train_commands(ROOT / "README.md")


def train_args(command: str) -> list[str]:
    args = shlex.split(command, comments=True)
    assert args[:3] == ["python", "-m", "train"]
    return args[3:]


def test_the_readme_has_its_commands():
    commands = readme_commands()
    assert len(commands) >= 4
    assert any("-m" in train_args(c) and "seed=range(0,5)" in train_args(c) for c in commands)  # the first comparison
    assert any("experiment=smoke" in c for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_composes_as_written(command):
    jobs = compose_command(train_args(command))
    for job in jobs:
        validate(job)
    if "seed=range(0,5)" in command:
        assert sorted({job.seed for job in jobs}) == [0, 1, 2, 3, 4]


def test_the_readme_smoke_command_trains(tmp_path):
    [args] = [
        train_args(c) for c in readme_commands() if "experiment=smoke" in train_args(c) and "-m" not in train_args(c)
    ]
    proc = run_train(*args, f"hydra.run.dir={tmp_path / 'run'}", "trainer.device=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["data"] == "synthetic"


DOC_COMMANDS = [
    (doc, c)
    for doc in ("docs/config.md", "docs/sweeps.md", "docs/attention.md")
    for c in train_commands(ROOT / doc)
    if "hydra.searchpath" not in c
]  # a comparison at tuned rates needs them first: test_tuning.py


def test_the_docs_have_their_commands():
    assert {doc for doc, _ in DOC_COMMANDS} == {"docs/config.md", "docs/sweeps.md", "docs/attention.md"}


@pytest.mark.parametrize("doc,command", DOC_COMMANDS)
def test_each_docs_command_composes_as_written(doc, command, tmp_path, monkeypatch):
    """docs/attention.md's own module is the file it shows, importable as mygates from where the command runs."""
    [module] = [
        text
        for lang, text in code_blocks(ROOT / "docs" / "attention.md")
        if lang == "python" and "class SoftGate" in text
    ]
    (tmp_path / "mygates.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    for job in compose_command(train_args(command)):
        validate(job)

"""Hydra callbacks."""

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from resattn.errors import ConfigError
from resattn.job import usage_error

# importing resattn.sweep registers the job-name resolver, in every process that unpickles these callbacks
from resattn.sweep import sweeper_params, write_record
from resattn.tracking import read_summary
from resattn.tuning import check_objective, check_tuning


def refuse(check, config: DictConfig) -> None:
    """One line and exit 2 for a config the check refuses: at the start of a run or sweep, before its folder
    exists, so a refused command leaves nothing behind."""
    try:
        check(config)
    except ConfigError as err:
        usage_error(str(err))


class SweepEnd(Callback):
    """At the start of a run or multirun: refuse a tuning preset that cannot give a result (resattn.tuning); under
    another sweeper (Optuna), record what a multirun's jobs share (sweep.yaml). At the end: write the sweep report,
    and exit non-zero if any job did not complete."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        refuse(check_objective, config)  # a tuning preset run once (hydra.mode=RUN)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        refuse(check_tuning, config)
        if str(config.hydra.sweeper.get("_target_", "")).endswith(".ResattnSweeper"):
            return  # the resattn sweeper writes it itself, once it knows the rerun may change the sweep's records
        write_record(Path(config.hydra.sweep.dir), sweeper_params(config.hydra), list(config.hydra.overrides.task))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:  # a broken report must not hide the sweep's own status below
            from resattn.report import write_report  # matplotlib and scipy: only at the end of a sweep

            write_report([sweep_dir])
        except Exception as err:
            print(f"warning: no sweep report: {type(err).__name__}: {err}", file=sys.stderr)
        statuses = {
            d.name: (read_summary(d) or {}).get("status", "missing")
            for d in sorted(sweep_dir.iterdir())
            if (d / ".hydra").is_dir()
        }
        bad = {name: s for name, s in statuses.items() if s != "completed"}
        if bad:
            print(
                f"error: {len(bad)} of {len(statuses)} jobs did not complete: "
                + "; ".join(f"{n} ({s})" for n, s in bad.items()),
                file=sys.stderr,
            )
            sys.exit(1)

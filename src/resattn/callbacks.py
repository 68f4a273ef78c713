"""Hydra callbacks."""

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from resattn.tracking import read_summary


class SweepEnd(Callback):
    """At the end of a multirun: exit non-zero if any job did not complete."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = {d.name: (read_summary(d) or {}).get("status", "missing") for d in sorted(sweep_dir.iterdir())
                    if (d / ".hydra").is_dir()}
        bad = {name: s for name, s in statuses.items() if s != "completed"}
        if bad:
            print(f"error: {len(bad)} of {len(statuses)} jobs did not complete: "
                  + "; ".join(f"{n} ({s})" for n, s in bad.items()), file=sys.stderr)
            sys.exit(1)

"""Entry point: `python -m train [key=value ...]`, or `python -m train -m ...` for a sweep."""

import time

STARTED = time.time()  # before the imports below: trainer.deadline counts the command's start-up too

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from resattn import clock
from resattn.errors import ConfigError
from resattn.job import check_choices, run, usage_error
from resattn.keys import check_keys
from resattn.tuning import check_objective, check_tuned_rates, objective_value, with_optuna_sweeper


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig):
    """The run's summary (None when it did not complete); with `objective` set (a tuning preset), the
    float the Optuna sweeper maximises: that summary key (resattn.tuning)."""
    key = check_objective(cfg)
    summary = run(cfg)
    return summary if key is None else objective_value(key, summary, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    clock.start_piece(STARTED)
    check_choices()
    try:
        check_tuned_rates(sys.argv[1:])
        sys.argv[1:] = check_keys(with_optuna_sweeper(sys.argv[1:]))
    except ConfigError as err:
        usage_error(str(err))
    main()

"""Entry point: `python -m train [key=value ...]`, or `python -m train -m ...` for a sweep."""

import sys

import hydra
from omegaconf import DictConfig

from resattn.errors import ConfigError
from resattn.job import check_choices, run, usage_error
from resattn.keys import check_keys


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig):
    return run(cfg)


if __name__ == "__main__":
    check_choices()
    try:
        sys.argv[1:] = check_keys(sys.argv[1:])
    except ConfigError as err:
        usage_error(str(err))
    main()

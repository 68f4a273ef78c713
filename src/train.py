"""Entry point: `python -m train [key=value ...]`, or `python -m train -m ...` for a sweep."""

import hydra
from omegaconf import DictConfig

from resattn.job import check_choices, run


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    check_choices()
    main()

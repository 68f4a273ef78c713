"""Sweep job names: each job's folder is named by the keys the sweep varies, and by nothing else; and the
sweep's records (multirun.yaml, sweep.yaml).

Hydra resolves `hydra.sweep.subdir` inside each job (in the worker process for joblib and
submitit), where only that job's overrides are known. Which keys vary is a property of the whole
sweep, so the `resattn.job_name` resolver reads it from the sweep folder's multirun.yaml, which
the sweeper writes before it launches any job: the same name for every launcher, and for a sweep
relaunched into the same folder (a rerun that runs only some of its jobs keeps the record, so its
jobs keep their names).
"""

import hashlib
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from resattn.errors import ConfigError
from resattn.identity import REPLICATE_KEY  # last in a job's name: the seeds of one arm sit side by side

NAME_MAX = 255  # bytes in one file name: Linux, macOS and Windows file systems
RECORD = "sweep.yaml"  # the sweep's fixed overrides and the keys its job folders are named by
MULTIRUN = "multirun.yaml"  # the sweep's command, whole: Hydra's own record of a sweep


def parse(overrides: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(list(overrides))


def _readable(override: Override) -> str:
    """The override's value as written on the command line; booleans as true/false (Hydra writes True)."""
    value = override.value()
    return str(value).lower() if isinstance(value, bool) else override.get_value_element_as_str()


def _values(override: Override) -> list[str]:
    if not override.is_sweep_override():
        return [_readable(override)]
    if override.is_discrete_sweep():
        return [v.lower() if v in ("True", "False") else v for v in override.sweep_string_iterator()]
    return ["*"]  # an interval sweep (optimizers only): always varies


def sweep_values(params: dict | None, task: list[str]) -> dict[str, list[str]]:
    """key -> the values it takes, as Hydra's basic sweeper expands a sweep: the sweeper's params
    (a preset's grid) first, then the command line, where a repeated key replaces the param."""
    expanded = {}
    for override in parse([f"{k}={v}" for k, v in (params or {}).items()] + list(task)):
        expanded[override.get_key_element()] = _values(override)
    return expanded


def varied_keys(params: dict | None, task: list[str]) -> set[str]:
    return {k for k, values in sweep_values(params, task).items() if len(set(values)) > 1}


def safe_name(name: str) -> str:
    """`name` as one folder name: no path separator (escaped as in URLs), at most NAME_MAX bytes
    (cut, with a hash of the whole name so that names stay distinct and stable)."""
    name = name.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")
    if len(name.encode()) <= NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    head = name.encode()[: NAME_MAX - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def job_name(task: list[str], varied: set[str] | None, num: int) -> str:
    """`pattern.lam_init=0.05,seed=0`: the job's values of the varied keys (all its overrides when
    `varied` is None), sorted by key, the seed last: a folder leads with its arm (tuned_lr=p1,seed=100), and
    the seeds of one arm sit side by side; `job<num>` when nothing varies."""
    parts = sorted(
        ((o.key_or_group, _readable(o)) for o in parse(task) if varied is None or o.get_key_element() in varied),
        key=lambda kv: (kv[0] == REPLICATE_KEY, kv),
    )
    return safe_name(",".join(f"{k}={v}" for k, v in parts) or f"job{num}")


def sweeper_params(hydra_cfg) -> dict:
    params = hydra_cfg.sweeper.get("params")
    return OmegaConf.to_container(params) if params else {}


def read_record(sweep_dir) -> DictConfig | None:
    """The sweep's multirun.yaml (the command's whole config, as Hydra's basic sweeper saves it); None without
    one. ConfigError (one line) when it cannot be read."""
    path = Path(sweep_dir) / MULTIRUN
    if not path.is_file():
        return None
    try:
        record = OmegaConf.load(path)
        record.hydra.overrides.task  # noqa: B018  (a sweep's record names its command)
    except Exception as err:
        raise ConfigError(
            f"{path} cannot be read ({str(err).splitlines()[0]}); repair it, or run the sweep into "
            "a new hydra.sweep.dir"
        ) from None
    return record


def write_records(config: DictConfig) -> None:
    """The sweep's records: multirun.yaml, as BasicSweeper.sweep saves it, and sweep.yaml (write_record)."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / MULTIRUN)
    write_record(sweep_dir, sweeper_params(config.hydra), list(config.hydra.overrides.task))


def remove_new_sweep(made: list[Path]) -> None:
    """Undo write_records for a new sweep refused before any job: `made`, the sweep folder and the folders above it
    that did not exist before (deepest first), go with its records where nothing else is in them."""
    for name in (MULTIRUN, RECORD):
        (made[0] / name).unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty (something else lives there), or never made
            return


def recorded_varied_keys(sweep_dir) -> set[str] | None:
    """The keys the sweep in `sweep_dir` varies, from the multirun.yaml the sweeper writes there before any
    job starts; None without one."""
    record = read_record(sweep_dir)
    if record is None:
        return None
    return varied_keys(sweeper_params(record.hydra), list(record.hydra.overrides.task))


def resolve_job_name(sweep_dir: str, task, num) -> str:
    """The `resattn.job_name` resolver: hydra.sweep.subdir in configs/config.yaml."""
    return job_name(list(task), recorded_varied_keys(sweep_dir), int(num))


def write_record(sweep_dir: Path, params: dict | None, task: list[str]) -> None:
    """sweep.yaml: what every job shares (once, instead of in every folder name) and what varies."""
    values = sweep_values(params, task)
    varied = varied_keys(params, task)
    record = {
        "fixed": [f"{k}={v[0]}" for k, v in values.items() if k not in varied],
        "varied": {k: v for k, v in values.items() if k in varied},
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / RECORD).write_text(
        "# the overrides every job of this sweep shares, and the keys its job folders "
        "are named by\n" + OmegaConf.to_yaml(OmegaConf.create(record))
    )


def run_name(pattern: str, attention: str) -> str:
    """A single run's folder names what it is, after its time: p3_controlled_cbam; baseline alone (it has
    no attention), so TensorBoard's run list says what each curve is."""
    return pattern if pattern == "baseline" else f"{pattern}_{attention}"


def register_resolvers() -> None:
    """The resolvers configs/config.yaml names folders with (again in a process whose resolvers were reset)."""
    OmegaConf.register_new_resolver("resattn.job_name", resolve_job_name, replace=True)
    OmegaConf.register_new_resolver("resattn.run_name", run_name, replace=True)


register_resolvers()

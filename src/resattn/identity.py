"""What makes two runs the same experiment: one definition, for resuming (checkpoint.load refuses a
checkpoint of another experiment) and for the report (it pools the seeds of one experiment, never two).

On the bottom floor beside errors.py: nothing from resattn but errors is imported, so both the
training side and the report can use it.
"""

from resattn.errors import flatten

# Config keys that say where a run runs, how fast, and what it logs: not what it computes. A resumed run
# may change them, and the report pools runs that differ only in them. The device and compile mode change
# the arithmetic in the last bits only (the report says when a group mixes devices or compile modes);
# data.root says where the data lives, not what it is: the data's fingerprint in summary.json says that.
NOT_THE_EXPERIMENT = (
    "hydra",
    "trainer.device",
    "trainer.resume",
    "trainer.num_threads",
    "trainer.compile",
    "trainer.eval_batch_size",
    "trainer.log_every_n_steps",
    "trainer.deadline",
    "tracking",
    "data.root",
    "data.download",
    "data.cache_dir",
)

# What a run resolved on its machine and summary.json records (`recorded`) changes the result too: runs that differ
# in their precision ("bf16" or "fp32": trainer.precision=auto resolves per machine, and a resumed run keeps the one
# it started in) or their data (data.Dataset.fingerprint: a hash of the images themselves) are never pooled.
# summary.json keys that say where and with which code a run ran, piece by piece (resattn.provenance): pooled, but a
# group that mixes them says so. A fused job's members train NCHW in one vmapped stack: the last bits differ from an
# unfused run's, and training amplifies them.
PLACEMENT_KEYS = (
    "device_type",
    "torch_version",
    "compiled",
    "memory_format",
    "fused",
    "code",
    "timm_version",
    "hydra_version",
    "custom_source_hash",
)

REPLICATE_KEY = "seed"  # the replicates of one experiment: the report's n, paired across arms

# the config key a run's own data is known by when its summary.json has no data_fingerprint (older runs)
DATA_ROOT = "data.root"
DATA_FINGERPRINT = "data.fingerprint"  # the name the report groups and labels the fingerprint by
PRECISION = "trainer.precision"


def defines_the_experiment(key: str) -> bool:
    """False for a flattened config key under NOT_THE_EXPERIMENT (tracking.progress under tracking)."""
    return not any(key == k or key.startswith(k + ".") for k in NOT_THE_EXPERIMENT)


def first_difference(theirs: dict, ours: dict) -> str | None:
    """The first flattened config key that defines the experiment and differs between two configs, or None."""
    theirs, ours = flatten(theirs), flatten(ours)
    return next(
        (k for k in dict.fromkeys([*ours, *theirs]) if defines_the_experiment(k) and theirs.get(k) != ours.get(k)), None
    )


def recorded(summary: dict) -> dict:
    """What a run's summary.json says it resolved, under the config names the report groups by: the precision
    it ran in (trainer.precision=auto says nothing) and its data's fingerprint, cut to 16 hex digits (64 bits
    tell data sets apart and keep labels short). Only what the summary holds."""
    out = {}
    if isinstance(summary.get("precision"), str):
        out[PRECISION] = summary["precision"]
    if isinstance(summary.get("data_fingerprint"), str) and summary["data_fingerprint"]:
        out[DATA_FINGERPRINT] = summary["data_fingerprint"][:16]
    return out


def experiment(config: dict) -> dict:
    """The values that say which experiment a run is, from its flattened config (with `recorded` merged in):
    the keys that define the experiment, and data.root where no fingerprint says what the data is (a run
    that predates it), so that two roots are never pooled unseen."""
    out = {k: v for k, v in config.items() if defines_the_experiment(k)}
    if DATA_FINGERPRINT not in config and DATA_ROOT in config:
        out[DATA_ROOT] = config[DATA_ROOT]
    return out


def placements(summaries: list[dict]) -> dict[str, list]:
    """{summary key: its distinct values} for the PLACEMENT_KEYS on which the summaries' pieces differ (a run that
    lists no pieces counts as one piece; one that does not record a key counts as its own value, "unrecorded")."""
    pieces = [p for s in summaries for p in s.get("pieces") or [s]]
    out = {}
    for key in PLACEMENT_KEYS:
        values = list(dict.fromkeys(p.get(key, "unrecorded") for p in pieces))
        if len(values) > 1:
            out[key] = values
    return out

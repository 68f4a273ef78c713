"""What one run of a training job leaves behind and reads back: summary.json, checkpoint.pt, events.

A `Run` is one job folder and its config inside a training process: a fused job trains several (its models are
the job's members, resattn.members), an ordinary job one. Everything here concerns a single run.

Resuming is one step: `load_saved` reads every run's checkpoint and checks it against its config and data, and
the checkpoints against each other, before anything is built; `restore` then applies one. A checkpoint holds the
run's `progress` (epoch, batch, step, every RNG state, the epoch's sums so far) and the `pieces` it was trained in
(device, precision, compile, torch version, threads, members, steps), which summary.json lists too.
"""

import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from resattn import checkpoint, data, robustness
from resattn.blocks import lam_to_logit
from resattn.errors import ConfigError
from resattn.tracking import Tracker, read_summary, write_json

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
# summary.json entries a checkpoint keeps, so a resumed (or rerun) run reports what it measured before
RESUMED_KEYS = ("best_test_acc", "final_test_acc", "best_val_acc", "final_val_acc", *robustness.SUMMARY_KEYS)


@dataclass
class Run:
    cfg: DictConfig
    run_dir: Path
    config: dict  # the resolved config, as the checkpoint records it
    generator: torch.Generator  # data order and augmentation
    loader: data.Loader
    summary: dict
    finished_before: bool = False  # resumed from a run that had completed: no second HParams entry
    resumed: bool = False  # from a checkpoint: its events after the checkpoint's step are purged, not all
    tracker: Tracker | None = None
    prior_time: float = 0.0  # wall time of earlier pieces of this run
    active: bool = True  # false once diverged: it rides along in the stack, nothing of it is recorded
    lam_start: float = field(init=False)

    def __post_init__(self):
        self.lam_start = torch.sigmoid(lam_to_logit(self.cfg.pattern.lam_init)).item()  # as the logit holds it

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT


def piece(setup: dict, step: int) -> dict:
    """This process's share of a run: when and where it ran, how (`setup`), and from which step."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        **setup,
        "start_step": step,
        "end_step": step,
        "wall_time_s": 0.0,
    }


def start_summary(cfg: DictConfig, config: dict, setup: dict, fingerprint: str) -> dict:
    """summary.json before the first step: what the run is, its data, how it runs (`setup`: device, precision...,
    this piece's, and `pieces`: every piece's), and its outcome so far (nothing yet)."""
    return {
        "pattern": cfg.pattern.name,
        "placement": cfg.pattern.placement,
        "controlled": bool(cfg.pattern.controlled) and cfg.pattern.placement != "none",
        "lam_init": float(cfg.pattern.lam_init),
        "lam_learnable": cfg.pattern.lam_learnable,
        "lam_shape": cfg.pattern.lam_shape,
        "attention": cfg.attention.name,
        "attention_keys": {k: v for k, v in config["attention"].items() if k != "name"},
        "model": cfg.model.name,
        "depth": cfg.model.get("depth"),
        "width": cfg.model.width,
        "lr": cfg.optim.lr,
        "lam_lr_scale": cfg.optim.lam_lr_scale,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "data_fingerprint": fingerprint,
        **setup,
        "pieces": [piece(setup, 0)],
        "epochs": cfg.trainer.epochs,
        "epochs_completed": 0,
        "step": 0,
        "best_test_acc": 0.0,
        "final_test_acc": 0.0,
        "final_lambda": {},
        "wall_time_s": 0.0,
        "status": "running",
    }


def resume_path(resume, ckpt_path: Path) -> Path | None:
    """The checkpoint trainer.resume names: the run folder's own (auto, when there is one), a path, or none."""
    if resume == "auto":
        return ckpt_path if ckpt_path.exists() else None
    return None if resume in (False, None) else Path(str(resume))


def load_saved(cfgs: list[DictConfig], run_dirs: list[Path], fingerprint: str) -> list[dict] | None:
    """Every run's checkpoint (trainer.resume), each of its run's experiment and these images (checkpoint.load),
    all standing at the same step in one precision; None when the job starts afresh."""
    paths = [resume_path(cfg.trainer.resume, Path(d) / CHECKPOINT) for cfg, d in zip(cfgs, run_dirs)]
    if not any(paths):
        return None
    if not all(paths):
        fresh = next(Path(d).name for d, p in zip(run_dirs, paths) if p is None)
        raise ConfigError(
            f"trainer.resume: {fresh} has no checkpoint, the other members of its fused job do; run "
            "them unfused (hydra/launcher=basic) to finish them"
        )
    states = [checkpoint.load(p, resolved(cfg), fingerprint) for cfg, p in zip(cfgs, paths)]
    steps = [s["progress"]["step"] for s in states]
    if len(set(steps)) > 1:
        raise ConfigError(
            f"trainer.resume: the members of a fused job stand at different steps ("
            f"{Path(run_dirs[steps.index(max(steps))]).name}: step {max(steps)}, "
            f"{Path(run_dirs[steps.index(min(steps))]).name}: step {min(steps)}); run them unfused "
            "(hydra/launcher=basic) to finish them"
        )
    if len({s["precision"] for s in states}) > 1:
        raise ConfigError(
            "trainer.resume: the members of a fused job were trained in different precisions; run "
            "them unfused (hydra/launcher=basic) to finish them"
        )
    return states


def save(run: Run, m: int, members, optimizer, scheduler, progress: dict, wall_time: float) -> None:
    """Run m's checkpoint: its weights and momentum, the schedule, where it stands (`progress`: epoch, batch within
    the epoch, step, every RNG state with the data order's at the epoch's start, and the epoch's sums so far or
    None at an epoch's end), the data and precision it trains on, and its pieces."""
    note_piece(run, progress["step"], wall_time)
    checkpoint.save(
        run.checkpoint_path,
        {
            "config": run.config,
            "data_fingerprint": run.summary["data_fingerprint"],
            "precision": run.summary["precision"],
            "pieces": run.summary["pieces"],
            "progress": progress,
            "model": members.state_dict(m),
            "momentum": members.momentum(optimizer, m),
            "scheduler": scheduler.state_dict(),
            "wall_time_s": run.summary["wall_time_s"],
            "metrics": {k: run.summary[k] for k in RESUMED_KEYS if k in run.summary},
        },
    )


def restore(run: Run, m: int, state: dict, members, optimizer, scheduler) -> None:
    """Apply run m's checkpoint (read and checked by load_saved) to the stack, the momentum, the schedule, its data
    order and its summary; the process-wide RNGs are the job's (checkpoint.set_rng_state, once)."""
    path = resume_path(run.cfg.trainer.resume, run.checkpoint_path)
    try:
        members.load_state_dict(m, state["model"])
        members.load_momentum(optimizer, m, state["momentum"])
        scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):  # the schedule sets them at its steps
            group["lr"] = lr
    except (RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(f"trainer.resume: '{path}' does not fit this model ({str(err).splitlines()[0]})") from None
    progress = state["progress"]
    run.generator.set_state(progress["rng"]["data"])
    run.prior_time = state["wall_time_s"]
    run.summary.update(
        epochs_completed=progress["epoch"],
        step=progress["step"],
        **state["metrics"],
        pieces=[
            *state["pieces"],
            {**run.summary["pieces"][-1], "start_step": progress["step"], "end_step": progress["step"]},
        ],
    )
    log.info("resuming from %s at epoch %d, step %d", path, progress["epoch"], progress["step"])


def note_piece(run: Run, step: int, wall_time: float) -> None:
    """The run's wall time so far, and how far this piece has taken it."""
    run.summary["wall_time_s"] = run.prior_time + wall_time
    run.summary["pieces"][-1].update(end_step=step, wall_time_s=wall_time)


def lambdas(members, m: int) -> dict[str, float]:
    """Member m's mean λ per block (its one λ when lam_shape is scalar)."""
    return {k: v.mean().item() for k, v in members.lambdas(m).items()}


def finish(run: Run, m: int, members, status: str, step: int, wall_time: float, **extra) -> dict:
    """Write run m's summary.json with `status`; when the run is done (completed or diverged), its HParams
    entry too (not at an interruption, which a resumed run would double; a run completed before this start
    keeps the one it has)."""
    lam = lambdas(members, m)
    note_piece(run, step, wall_time)
    run.summary.update(
        status=status, final_lambda=lam, lam_travel={k: v - run.lam_start for k, v in lam.items()}, step=step, **extra
    )
    if run.cfg.pattern.lam_shape == "channel":
        run.summary["final_lambda_channels"] = {k: v.tolist() for k, v in members.lambdas(m).items()}
    write_json(run.run_dir / "summary.json", run.summary)
    if status in ("completed", "diverged") and not run.finished_before and run.tracker is not None:
        run.tracker.hparams(run.summary, run.cfg)
    return run.summary


def was_finished(run_dir: Path) -> bool:
    return (read_summary(run_dir) or {}).get("status") == "completed"


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)

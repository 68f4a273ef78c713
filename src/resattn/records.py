"""What one member of a training job leaves behind and reads back: summary.json, checkpoint.pt, events.

A `Member` is one run (one job folder, one config) inside a training process; a fused job trains
several, an ordinary job one. Everything here concerns a single member.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from resattn import checkpoint, data, robustness
from resattn.blocks import lam_to_logit
from resattn.errors import ConfigError
from resattn.tracking import Tracker, read_summary, write_json

log = logging.getLogger(__name__)

# summary.json entries a checkpoint keeps, so a resumed (or rerun) run reports what it measured before
RESUMED_KEYS = ("best_test_acc", "final_test_acc", "best_val_acc", "final_val_acc", *robustness.SUMMARY_KEYS)


@dataclass
class Member:
    cfg: DictConfig
    run_dir: Path
    config: dict  # the resolved config, as the checkpoint records it
    generator: torch.Generator  # data order and augmentation
    loader: data.Loader
    summary: dict
    finished_before: bool  # summary.json said completed before this start: no second HParams entry
    resumed: bool = False  # from a checkpoint: its events after the checkpoint's step are purged, not all
    tracker: Tracker | None = None
    prior_time: float = 0.0  # wall time of earlier starts of this run
    active: bool = True  # false once diverged: it rides along in the stack, nothing of it is recorded
    lam_start: float = field(init=False)

    def __post_init__(self):
        self.lam_start = torch.sigmoid(lam_to_logit(self.cfg.pattern.lam_init)).item()  # as the logit holds it

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"


def start_summary(cfg: DictConfig, config: dict, setup: dict) -> dict:
    """summary.json before the first step: what the run is, how it runs (`setup`: device, precision...), and its
    outcome so far (nothing yet)."""
    return {
        "pattern": cfg.pattern.name, "placement": cfg.pattern.placement,
        "controlled": bool(cfg.pattern.controlled) and cfg.pattern.placement != "none",
        "lam_init": float(cfg.pattern.lam_init), "lam_learnable": cfg.pattern.lam_learnable,
        "lam_shape": cfg.pattern.lam_shape, "attention": cfg.attention.name,
        "attention_keys": {k: v for k, v in config["attention"].items() if k != "name"},
        "model": cfg.model.name, "depth": cfg.model.get("depth"), "width": cfg.model.width,
        "lr": cfg.optim.lr, "lam_lr_scale": cfg.optim.lam_lr_scale, "data": cfg.data.name, "seed": cfg.seed,
        **setup, "epochs": cfg.trainer.epochs, "epochs_completed": 0, "step": 0,
        "best_test_acc": 0.0, "final_test_acc": 0.0, "final_lambda": {}, "wall_time_s": 0.0, "status": "running",
    }


def resume_path(resume, ckpt_path: Path) -> Path | None:
    """The checkpoint trainer.resume names: the run folder's own (auto, when there is one), a path, or none."""
    if resume == "auto":
        return ckpt_path if ckpt_path.exists() else None
    return None if resume in (False, None) else Path(str(resume))


def save(member: Member, m: int, members, optimizer, scheduler, progress: dict, train_sums, wall_time: float) -> None:
    """Member m's checkpoint: its weights and momentum, the schedule, every RNG, and where the epoch stands.

    `progress`: epoch, batch (within the epoch), step and the data generator's state at the epoch's start."""
    member.summary["wall_time_s"] = member.prior_time + wall_time
    checkpoint.save(member.checkpoint_path, {
        "config": member.config, "model": members.state_dict(m), "momentum": members.momentum(optimizer, m),
        "scheduler": scheduler.state_dict(), "rng": {**checkpoint.rng_state(), "data": progress["epoch_rng"]},
        "epoch": progress["epoch"], "batch": progress["batch"], "step": progress["step"], "train_sums": train_sums,
        "wall_time_s": member.summary["wall_time_s"],
        "metrics": {k: member.summary[k] for k in RESUMED_KEYS if k in member.summary},
    })


def restore(member: Member, m: int, path: Path, members, optimizer, scheduler) -> dict:
    """Load member m's checkpoint of this very config into the stack, the momentum, the schedule and every RNG."""
    state = checkpoint.load(path, member.config)
    try:
        members.load_state_dict(m, state["model"])
        members.load_momentum(optimizer, m, state["momentum"])
        scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):  # the schedule sets them at its steps
            group["lr"] = lr
    except (RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(f"trainer.resume: '{path}' does not fit this model ({str(err).splitlines()[0]})") from None
    checkpoint.set_rng_state(state["rng"])
    member.generator.set_state(state["rng"]["data"])
    member.prior_time = state["wall_time_s"]
    member.summary.update(epochs_completed=state["epoch"], step=state["step"], **state["metrics"])
    log.info("resuming from %s at epoch %d, step %d", path, state["epoch"], state["step"])
    return state


def lambdas(members, m: int) -> dict[str, float]:
    """Member m's mean λ per block (its one λ when lam_shape is scalar)."""
    return {k: v.mean().item() for k, v in members.lambdas(m).items()}


def finish(member: Member, m: int, members, status: str, step: int, wall_time: float, **extra) -> dict:
    """Write member m's summary.json with `status`; when the run is done (completed or diverged), its HParams
    entry too (not at an interruption, which a resumed run would double; a run completed before this start
    keeps the one it has)."""
    lam = lambdas(members, m)
    member.summary.update(status=status, final_lambda=lam, lam_travel={k: v - member.lam_start for k, v in lam.items()},
                          step=step, wall_time_s=member.prior_time + wall_time, **extra)
    if member.cfg.pattern.lam_shape == "channel":
        member.summary["final_lambda_channels"] = {k: v.tolist() for k, v in members.lambdas(m).items()}
    write_json(member.run_dir / "summary.json", member.summary)
    if status in ("completed", "diverged") and not member.finished_before and member.tracker is not None:
        member.tracker.hparams(member.summary, member.cfg)
    return member.summary


def was_finished(run_dir: Path) -> bool:
    return (read_summary(run_dir) or {}).get("status") == "completed"


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)

"""The training loop: composed configs in, finished run folders out.

`train(cfg, run_dir)` trains one run; `train_members(cfgs, run_dirs)` trains the runs of a fused job
(configs that differ only in resattn.members.FUSABLE_KEYS) as the members of one stacked model. Both are
the same loop over resattn.members' interface: an ordinary run's model is the plain module (members.Single),
a fused job's the stacked one (members.Stacked). Per step: every member's batch, one forward and backward,
one optimizer step; nothing is read back from the device except at log steps.
"""

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from resattn import checkpoint, clock, data, provenance, records, robustness
from resattn.build import (
    build_model,
    build_optimizer,
    check_fusable,
    configure_device,
    pick_device,
    pick_precision,
    seed_everything,
    set_threads,
    use_compile,
)
from resattn.config import validate
from resattn.errors import ConfigError, Diverged, Interrupted
from resattn.evaluate import evaluate
from resattn.members import FUSABLE_KEYS, Members, fusion_key, stack
from resattn.records import Run
from resattn.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class EpochSums:
    """Per member: the summed training loss and correct predictions of the epoch so far (on the device)."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0

    @classmethod
    def start(cls, n: int, device, saved: list | None = None) -> "EpochSums":
        """Zeros, or each member's saved [loss sum, correct, seen] of a resumed epoch."""
        if saved is None:
            return cls(torch.zeros(n, device=device), torch.zeros(n, dtype=torch.long, device=device))
        return cls(
            torch.tensor([s[0] for s in saved], device=device),
            torch.tensor([s[1] for s in saved], device=device),
            saved[0][2],
        )

    def add(self, losses: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += losses.float() * y.shape[1]
        self.correct += (out.argmax(-1) == y).sum(1)
        self.seen += y.shape[1]

    def of(self, m: int) -> list:
        return [self.loss[m].item(), self.correct[m].item(), self.seen]


@dataclass
class Job:
    """What the members of one training process share, and where the loop stands."""

    cfg: DictConfig  # the first run's: every key but FUSABLE_KEYS is the same for all
    runs: list[Run]  # one per member: its folder, config, summary and events
    members: Members  # the models, member-first
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loaders: dict[str, data.Loader | None]  # val (None without a split), test, robust (None when off)
    map_images: torch.Tensor  # fixed test images for the attention maps, on the CPU
    device: torch.device
    bf16: bool
    started: float  # time.perf_counter() when the job began (its wall time counts from here)
    epoch: int = 0
    skip: int = 0  # batches of the current epoch already trained (a resumed epoch)
    step: int = 0
    pending_sums: list | None = None  # per member, the resumed epoch's sums so far
    lr: float = 0.0  # the base rate of the last step taken (the schedule's next one may lie past its end)

    @property
    def active(self) -> list[int]:
        return [m for m, run in enumerate(self.runs) if run.active]

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def train(cfg: DictConfig, run_dir: Path, stop: list[int] | None = None) -> dict:
    """Train as `cfg` says, writing events, checkpoint.pt and summary.json into run_dir; the summary.

    A signal number put into `stop` (by a signal handler) ends the run after the current step. Raises
    ConfigError, Diverged or Interrupted (after saving)."""
    return train_members([cfg], [run_dir], stop)[0]


def train_members(
    cfgs: list[DictConfig],
    run_dirs: list[Path],
    stop: list[int] | None = None,
    fused: bool = False,
    on_start: Callable[[], None] | None = None,
) -> list[dict]:
    """Train each config into its run folder, all as members of one stacked model; their summaries. `fused`: the
    job is one of the fused launcher's, which trains every job in one precision (build.pick_precision).
    `on_start`: called once every check has passed, before anything is written into a run folder.

    A member whose loss stops being finite is recorded `diverged` at its step and the others go on; when none
    is left, Diverged is raised. A stop (signal or trainer.deadline) saves every member and raises Interrupted."""
    stop = [] if stop is None else stop
    for cfg in cfgs:
        validate(cfg)
    if len({fusion_key(cfg) for cfg in cfgs}) > 1:
        raise ConfigError(f"members of a fused job may differ only in {' and '.join(FUSABLE_KEYS)}")
    job = prepare(cfgs, [Path(d) for d in run_dirs], time.perf_counter(), fused, on_start)
    try:
        run_epochs(job, stop)
        summaries = [
            records.finish(run, m, job.members, "completed", job.step, job.elapsed()) if run.active else run.summary
            for m, run in enumerate(job.runs)
        ]
    except Interrupted as err:
        for m in job.active:
            records.finish(
                job.runs[m],
                m,
                job.members,
                "interrupted",
                job.step,
                job.elapsed(),
                epoch=job.epoch,
                stop_reason=err.reason,
            )
        raise
    finally:
        for run in job.runs:
            run.tracker.close()
    for run in job.runs:
        run.tracker.table(run.summary)
    return summaries


def prepare(
    cfgs: list[DictConfig],
    run_dirs: list[Path],
    started: float,
    fused: bool,
    on_start: Callable[[], None] | None = None,
) -> Job:
    """Device, data, every run's checkpoint (read and checked before anything is built), the members and their
    optimizer, each run's record; then the checkpoints applied."""
    cfg, t = cfgs[0], cfgs[0].trainer
    device = pick_device(t.device)
    threads = set_threads(t.num_threads)
    configure_device(device)
    ds = data.load(cfg.data)
    saved = records.load_saved(cfgs, run_dirs, ds.fingerprint)
    bf16 = pick_precision(t.precision, device, fused or len(cfgs) > 1, saved[0]["precision"] if saved else None)
    dtype = torch.bfloat16 if bf16 else torch.float32
    channels_last = t.channels_last and len(cfgs) == 1  # vmap refuses channels_last: several members go NCHW
    mean, std = data.channel_stats(ds.train.images)

    def eval_loader(split):
        return split and data.Loader(split, t.eval_batch_size, mean, std, device, dtype, channels_last)

    loaders = {"val": eval_loader(getattr(ds, "val", None)), "test": eval_loader(ds.test)}
    loaders["robust"] = robustness.corruption_loader(cfg, ds.test, loaders["test"])
    train_loader = data.Loader(
        ds.train, t.batch_size, mean, std, device, dtype, channels_last, augment=cfg.data.augment, drop_last=True
    )  # drop_last: one shape to compile
    members = build_members(cfgs, len(ds.classes), device, channels_last)
    total_steps = t.epochs * len(train_loader)
    optimizer, scheduler = build_optimizer(cfg, members.params, members.template, total_steps)
    compiled = use_compile(t.compile, device, total_steps)
    if compiled:
        members.compile()
    setup = piece_setup(cfgs, device, bf16, compiled, channels_last, threads)
    job = Job(
        cfg,
        [new_run(c, d, train_loader, setup, ds.fingerprint) for c, d in zip(cfgs, run_dirs)],
        members,
        optimizer,
        scheduler,
        loaders,
        ds.test.images[:8],
        device,
        bf16,
        started,
    )
    if saved:
        resume(job, saved)
    if on_start is not None:  # the last refusal is behind us
        on_start()
    for m, run in enumerate(job.runs):  # only once every checkpoint is applied: a refusal leaves events untouched
        open_tracker(job, m, run)
    log.info(
        "training %s on %s (%s, %d steps an epoch, %s, %d CPU threads%s)",
        cfg.pattern.name,
        device,
        setup["precision"],
        len(train_loader),
        "compiled" if compiled else "eager",
        threads,
        f", {len(cfgs)} fused members" if len(cfgs) > 1 else "",
    )
    return job


def build_members(cfgs: list[DictConfig], classes: int, device: torch.device, channels_last: bool) -> Members:
    """Each config's model, seeded by its own seed, stacked as the job's members (one: the plain module)."""
    models = []
    for c in cfgs:
        seed_everything(c.seed)
        model = build_model(c, classes).to(device)
        models.append(model.to(memory_format=torch.channels_last) if channels_last else model)
    if len(models) > 1:
        check_fusable(cfgs[0], models[0])  # a module vmap cannot stack: one line, before any step
    return stack(models)


def piece_setup(cfgs: list[DictConfig], device, bf16: bool, compiled: bool, channels_last: bool, threads: int) -> dict:
    """How and with which code this piece runs, as summary.json and each piece record it: what ran, not the
    config's wish (trainer.channels_last: a fused job trains NCHW)."""
    return {
        "device": str(device),
        "device_type": device.type,
        "precision": "bf16" if bf16 else "fp32",
        "compiled": compiled,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "fused": len(cfgs) > 1,
        "torch_version": str(torch.__version__),
        "num_threads": threads,
        "members": len(cfgs),
        **provenance.code_identity(records.resolved(cfgs[0].attention)),
    }


def new_run(cfg: DictConfig, run_dir: Path, train_loader: data.Loader, setup: dict, fingerprint: str) -> Run:
    """A run's record before its first step: its own data order (the images stay on the device once)."""
    config = records.resolved(cfg)
    loader = copy.copy(train_loader)
    loader.generator = torch.Generator().manual_seed(cfg.seed)
    return Run(cfg, run_dir, config, loader.generator, loader, records.start_summary(cfg, config, setup, fingerprint))


def resume(job: Job, saved: list[dict]) -> None:
    """Apply each run's checkpoint; the job stands where they stand (load_saved checked they agree)."""
    for m, (run, state) in enumerate(zip(job.runs, saved)):
        run.finished_before = records.was_finished(run.run_dir)  # before restore rewrites nothing but memory
        records.restore(run, m, state, job.members, job.optimizer, job.scheduler)
        run.resumed = True
    progress = saved[0]["progress"]
    checkpoint.set_rng_state(progress["rng"])  # one process: the same global RNG states in every member's
    job.epoch, job.skip, job.step = progress["epoch"], progress["batch"], progress["step"]
    if progress["train_sums"] is not None:  # saved mid-epoch; at an epoch's end there are no sums to carry
        job.pending_sums = [state["progress"]["train_sums"] for state in saved]


def open_tracker(job: Job, m: int, run: Run) -> None:
    # Purge what a resumed run wrote after its checkpoint; a fresh run purges any older events in its folder.
    run.tracker = Tracker(
        run.run_dir,
        purge_step=job.step + 1 if run.resumed else 0,
        progress=run.cfg.tracking.progress and m == 0,
        blocks=list(job.members.lambdas(m)),
    )
    if job.step == 0:
        run.tracker.scalars({f"lambda/{k}": v for k, v in records.lambdas(job.members, m).items()}, 0)


def run_epochs(job: Job, stop: list[int]) -> None:
    job.members.train()
    while job.epoch < job.cfg.trainer.epochs:
        epoch_rngs = [run.generator.get_state() for run in job.runs]
        sums, train_time, trained = train_epoch(job, epoch_rngs, stop)
        mark_diverged(job, sums.loss)
        job.epoch += 1
        end_epoch(job, sums, trained / max(train_time, 1e-9))


def train_epoch(job: Job, epoch_rngs: list, stop: list[int]) -> tuple[EpochSums, float, int]:
    """The rest of the epoch; its sums, training time and images trained by each member in this process."""
    t, device = job.cfg.trainer, job.device
    sums = EpochSums.start(len(job.runs), device, job.pending_sums)
    start, seen_before = time.perf_counter(), sums.seen
    active = torch.tensor([run.active for run in job.runs], device=device)
    batches = zip(*(run.loader.batches(job.skip) for run in job.runs))
    for i, pairs in enumerate(batches, start=job.skip):
        x, y = stack_batches(pairs)
        job.lr = job.optimizer.param_groups[0]["lr"]
        losses, out = train_step(
            job.members, job.optimizer, job.scheduler, x, y, active, job.bf16, job.cfg.optim.label_smoothing
        )
        job.step += 1
        sums.add(losses, out, y)
        if job.step % t.log_every_n_steps == 0:
            if mark_diverged(job, sums.loss):
                active = torch.tensor([run.active for run in job.runs], device=device)
            log_progress(job, sums, i + 1, (sums.seen - seen_before) / (time.perf_counter() - start))
        if stop or clock.passed(t.deadline):
            save_all(job, epoch_rngs, i + 1, sums)
            raise Interrupted(stop[0] if stop else None)
    job.skip, job.pending_sums = 0, None
    return sums, time.perf_counter() - start, sums.seen - seen_before


def stack_batches(pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's (x, y) -> x (members, batch, C, H, W), y (members, batch); a view for one member."""
    if len(pairs) == 1:
        return pairs[0][0].unsqueeze(0), pairs[0][1].unsqueeze(0)
    return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


def train_step(
    members: Members,
    optimizer,
    scheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    active: torch.Tensor,
    bf16: bool,
    label_smoothing: float,
):
    """One optimizer step for every member; (each member's loss, logits), still on the device.

    The members' losses are summed, so each member's gradient is that of its own mean loss; a diverged
    member's loss is left out (its NaNs stay in its own slice of every tensor)."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        out = members(x)
        losses = (
            F.cross_entropy(out.flatten(0, 1), y.flatten(), label_smoothing=label_smoothing, reduction="none")
            .view(y.shape)
            .mean(1)
        )
    optimizer.zero_grad(set_to_none=True)
    torch.where(active, losses, 0.0).sum().backward()
    optimizer.step()
    scheduler.step()
    return losses.detach(), out


def mark_diverged(job: Job, loss_sums: torch.Tensor) -> bool:
    """Record each member whose summed loss is no longer finite as diverged; Diverged when none is left."""
    newly = [m for m, finite in enumerate(torch.isfinite(loss_sums).tolist()) if not finite and job.runs[m].active]
    for m in newly:
        run = job.runs[m]
        run.active = False
        records.finish(
            run,
            m,
            job.members,
            "diverged",
            job.step,
            job.elapsed(),
            error=f"non-finite training loss at step {job.step}",
        )
        log.error("%s diverged: non-finite training loss at step %d", run.run_dir.name, job.step)
    if not job.active:
        raise Diverged(f"non-finite training loss at step {job.step}")
    return bool(newly)


def log_progress(job: Job, sums: EpochSums, batch: int, images_per_s: float) -> None:
    """λ into every member's events; the first active member's loss, accuracy and λ on the progress bar."""
    for m in job.active:
        lam = records.lambdas(job.members, m)
        job.runs[m].tracker.scalars({f"lambda/{k}": v for k, v in lam.items()}, job.step)
    m = job.active[0]
    loss, correct, seen = sums.of(m)
    lam = records.lambdas(job.members, m)
    many = f" ({len(job.active)} members)" if len(job.runs) > 1 else ""
    job.runs[0].tracker.show(
        f"epoch {job.epoch + 1}/{job.cfg.trainer.epochs}",
        batch,
        len(job.runs[0].loader),
        f"loss {loss / seen:.3f} acc {correct / seen:.3f} {describe_lambdas(lam)} {images_per_s:.0f} img/s{many}",
    )


def describe_lambdas(lam: dict[str, float]) -> str:
    """λ per block for a progress or log line; their range for a deep net, where one each would fill the line."""
    if len(lam) > 4:
        return f"λ {min(lam.values()):.3f}..{max(lam.values()):.3f} over {len(lam)} blocks"
    return " ".join(f"λ {k} {v:.4f}" for k, v in lam.items())


def end_epoch(job: Job, sums: EpochSums, images_per_s: float) -> None:
    """Evaluate every member at once, record the epoch in each member's events and summary, save and log."""
    epochs, last = job.cfg.trainer.epochs, job.epoch == job.cfg.trainer.epochs
    held_out = "val" if job.loaders["val"] is not None else "test"  # with a validation split, test is read once
    metrics = {held_out: evaluate(job.members, job.loaders[held_out], job.bf16)}
    if held_out == "val" and last:
        metrics["test"] = evaluate(job.members, job.loaders["test"], job.bf16)
    robust = None
    if job.loaders["robust"] is not None and robustness.due(job.cfg.eval.corruption_every, job.epoch, epochs):
        robust = robustness.run(
            job.members,
            job.loaders["robust"],
            job.cfg,
            job.bf16,
            [run.tracker if run.active else None for run in job.runs],
            job.step,
        )
    for m in job.active:
        record_epoch(job, m, sums, metrics, images_per_s)
        if robust is not None:
            job.runs[m].summary.update(robust[m])
    m = job.active[0]
    loss_sum, correct, seen = sums.of(m)
    losses, accs = metrics[held_out]
    log.info(
        "epoch %d/%d: train loss %.4f acc %.4f | %s loss %s acc %s | %s",
        job.epoch,
        epochs,
        loss_sum / seen,
        correct / seen,
        held_out,
        " ".join(f"{losses[i]:.4f}" for i in job.active),
        " ".join(f"{accs[i]:.4f}" for i in job.active),
        describe_lambdas(job.runs[m].summary["final_lambda"]) or "no λ",
    )
    save_all(job, None, 0, None)
    for m in job.active:
        records.finish(job.runs[m], m, job.members, "running", job.step, job.elapsed())


def record_epoch(job: Job, m: int, sums: EpochSums, metrics: dict, images_per_s: float) -> None:
    """Member m's epoch: scalars, λ histograms, attention maps when due, and its summary's running figures."""
    run, step = job.runs[m], job.step
    loss_sum, correct, seen = sums.of(m)
    lam = records.lambdas(job.members, m)
    scalars = {
        "acc/train": correct / seen,
        "loss/train": loss_sum / seen,
        "lr": job.lr,
        "throughput/train_img_s": images_per_s,
        **({f"lambda/{k}": v for k, v in lam.items()} if step % job.cfg.trainer.log_every_n_steps else {}),
    }
    for split, (losses, accs) in metrics.items():
        scalars.update({f"acc/{split}": accs[m], f"loss/{split}": losses[m]})
        best = run.summary.get(f"best_{split}_acc") or 0.0
        run.summary.update({f"final_{split}_acc": accs[m], f"best_{split}_acc": max(best, accs[m])})
    if "val" in metrics and "test" not in metrics:
        run.summary.update(best_test_acc=None, final_test_acc=None)  # not read before the end
    elif "val" in metrics:
        run.summary["best_test_acc"] = None  # read once: no best to pick, and picking on test is what val avoids
    run.tracker.scalars(scalars, step)
    run.tracker.histograms({f"lambda_channels/{k}": v for k, v in job.members.lambdas(m).items() if v.ndim}, step)
    every = run.cfg.tracking.attention_maps_every
    if job.epoch in (1, job.cfg.trainer.epochs) if every is None else every and job.epoch % every == 0:
        x = job.loaders["test"].normalise(job.map_images.to(job.device)).float()
        run.tracker.attention_maps(job.members.module(m), job.map_images, x, step)
    run.summary.update(epochs_completed=job.epoch, step=step, final_lambda=lam)


def save_all(job: Job, epoch_rngs: list | None, batch: int, sums: EpochSums | None) -> None:
    """Every active run's checkpoint: mid-epoch (`epoch_rngs` replay the epoch's draws) or at its end."""
    rng = checkpoint.rng_state()
    for m in job.active:
        data_rng = job.runs[m].generator.get_state() if epoch_rngs is None else epoch_rngs[m]
        progress = {
            "epoch": job.epoch,
            "batch": batch,
            "step": job.step,
            "rng": {**rng, "data": data_rng},
            "train_sums": None if sums is None else sums.of(m),
        }
        records.save(job.runs[m], m, job.members, job.optimizer, job.scheduler, progress, job.elapsed())

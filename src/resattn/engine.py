"""The training loop: one function, `train`, from a composed config to a finished run folder."""

import logging
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from resattn import checkpoint, data, robustness
from resattn.config import validate
from resattn.errors import ConfigError, Diverged, Interrupted
from resattn.evaluate import evaluate
from resattn.attention import attention_layer
from resattn.blocks import lam_to_logit
from resattn.model import ResidualNet, SimpleCNN
from resattn.resnet import CifarResNet
from resattn.tracking import Tracker, write_json

log = logging.getLogger(__name__)



def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: no CUDA device is available here; use trainer.device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={name}: no MPS device is available here; use trainer.device=auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"trainer.device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return device


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # native bf16 (AVX512-BF16, AMX): about 1.8x fp32 here, see docs/benchmarks.md
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return False


def use_compile(setting, device: torch.device, total_steps: int) -> bool:
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return True
    # On CPU, compiling costs about 25 s once and then saves a fifth (bf16) to a third (fp32) of every step
    # (docs/benchmarks.md): it pays for long runs only, and needs a C++ compiler.
    return device.type == "cpu" and total_steps >= 500 and shutil.which("g++") is not None


def build_model(cfg: DictConfig, num_classes: int) -> ResidualNet:
    p, m = cfg.pattern, cfg.model
    attention = attention_layer(**OmegaConf.to_container(cfg.attention))
    common = dict(pattern=p.name, num_classes=num_classes, attention=attention, lam_init=float(p.lam_init),
                  lam_learnable=p.lam_learnable, controlled=p.controlled, lam_shape=p.lam_shape, width=m.width)
    if m.name == "resnet":
        return CifarResNet(depth=m.depth, shortcut=m.shortcut, **common)
    return SimpleCNN(**common)


def describe_lambdas(lam: dict[str, float]) -> str:
    """λ per block for a progress or log line; their range for a deep net, where one each would fill the line."""
    if len(lam) > 4:
        return f"λ {min(lam.values()):.3f}..{max(lam.values()):.3f} over {len(lam)} blocks"
    return " ".join(f"λ {k} {v:.4f}" for k, v in lam.items())


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, total_steps: int):
    o = cfg.optim
    # No weight decay on BN parameters or on the lambda logits: decay would pull lambda towards 0.5.
    # The logits get their own learning rate (optim.lam_lr_scale): at the base rate lambda barely moves.
    params = dict(model.named_parameters())
    lam = [p for n, p in params.items() if n.endswith("lam_logit")]
    decay = [p for n, p in params.items() if p.ndim > 1]
    no_decay = [p for n, p in params.items() if p.ndim <= 1 and not n.endswith("lam_logit")]
    lrs = [o.lr, o.lr, o.lr * o.lam_lr_scale]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": o.weight_decay, "lr": lrs[0]},
                           {"params": no_decay, "weight_decay": 0.0, "lr": lrs[1]},
                           {"params": lam, "weight_decay": 0.0, "lr": lrs[2]}],
                          lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    if o.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lrs, total_steps=total_steps,
                                                    pct_start=float(o.warmup_frac), anneal_strategy="linear",
                                                    cycle_momentum=False)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return opt, sched


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_step(forward, optimizer, scheduler, x, y, bf16: bool, label_smoothing: float):
    """One optimizer step; returns (loss, logits), both still on the device."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        out = forward(x)
        loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss, out


def start_summary(cfg: DictConfig, config: dict, model, device: torch.device) -> dict:
    """summary.json before the first step: what the run is, and its outcome so far (nothing yet)."""
    return {
        "pattern": cfg.pattern.name, "placement": cfg.pattern.placement,
        "controlled": any(b.controlled for b in model.blocks.values()),
        "lam_init": float(cfg.pattern.lam_init), "lam_learnable": cfg.pattern.lam_learnable,
        "lam_shape": cfg.pattern.lam_shape, "attention": cfg.attention.name,
        "attention_keys": {k: v for k, v in config["attention"].items() if k != "name"},
        "model": cfg.model.name, "depth": cfg.model.get("depth"), "width": cfg.model.width,
        "lr": cfg.optim.lr, "lam_lr_scale": cfg.optim.lam_lr_scale,
        "data": cfg.data.name, "seed": cfg.seed, "device": str(device), "num_threads": torch.get_num_threads(),
        "epochs": cfg.trainer.epochs, "epochs_completed": 0, "step": 0,
        "best_test_acc": 0.0, "final_test_acc": 0.0, "final_lambda": {}, "wall_time_s": 0.0, "status": "running",
    }


def resume_path(resume, ckpt_path: Path) -> Path | None:
    """The checkpoint trainer.resume names: the run folder's own (auto, when there is one), a path, or none."""
    if resume == "auto":
        return ckpt_path if ckpt_path.exists() else None
    return None if resume in (False, None) else Path(str(resume))


def restore(path: Path, config: dict, model, optimizer, scheduler, gen: torch.Generator) -> dict:
    """Load a checkpoint of this very config into the model, optimizer, schedule and every RNG; its state."""
    state = checkpoint.load(path, config)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(f"trainer.resume: '{path}' does not fit this model ({str(err).splitlines()[0]})") from None
    checkpoint.set_rng_state(state["rng"])
    gen.set_state(state["rng"]["data"])
    return state


def train(cfg: DictConfig, run_dir: Path, stop: list[int] | None = None) -> dict:
    """Train as `cfg` says, writing events, checkpoint.pt and summary.json into run_dir.

    A signal number put into `stop` (by a signal handler) ends the run after the current step.
    Returns the summary; raises ConfigError, Diverged or Interrupted (after saving) otherwise."""
    stop = [] if stop is None else stop
    validate(cfg)
    run_dir = Path(run_dir)
    t = cfg.trainer
    device = pick_device(t.device)
    if t.num_threads != "auto":
        torch.set_num_threads(int(t.num_threads))
    bf16 = use_bf16(t.precision, device)
    if device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest kernels; TF32 where fp32 runs
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    seed_everything(cfg.seed)

    ds = data.load(cfg.data)
    mean, std = data.channel_stats(ds.train.images)
    gen = torch.Generator().manual_seed(cfg.seed)
    dtype = torch.bfloat16 if bf16 else torch.float32
    train_loader = data.Loader(ds.train, t.batch_size, mean, std, device, dtype, t.channels_last,
                               augment=cfg.data.augment, generator=gen, drop_last=True)  # one shape to compile
    test_loader = data.Loader(ds.test, t.eval_batch_size, mean, std, device, dtype, t.channels_last)
    robust_loader = robustness.corruption_loader(cfg, ds.test, test_loader)

    model = build_model(cfg, len(ds.classes)).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train_loader)
    optimizer, scheduler = build_optimizer(cfg, model, t.epochs * steps_per_epoch)
    compiled = use_compile(t.compile, device, t.epochs * steps_per_epoch)
    if compiled:
        # A fresh compile cache for each run: the jobs of a multirun share one process, and once one function
        # has been compiled for recompile_limit (8) models, dynamo silently runs every later job uncompiled.
        torch.compiler.reset()
    forward = torch.compile(model) if compiled else model

    config = OmegaConf.to_container(cfg, resolve=True)
    summary = start_summary(cfg, config, model, device)

    ckpt_path = run_dir / "checkpoint.pt"
    resume_from = resume_path(t.resume, ckpt_path)
    epoch, skip, step, train_sums, prior_time = 0, 0, 0, None, 0.0
    if resume_from is not None:
        state = restore(resume_from, config, model, optimizer, scheduler, gen)
        epoch, skip, step = state["epoch"], state["batch"], state["step"]
        train_sums = state["train_sums"]
        prior_time = state["wall_time_s"]
        summary.update(best_test_acc=state["best_test_acc"], final_test_acc=state["final_test_acc"],
                       epochs_completed=epoch, step=step, **state.get("robustness", {}))
        log.info("resuming from %s at epoch %d, step %d", resume_from, epoch, step)

    map_images = ds.test.images[:8]  # fixed images for the attention maps
    # Purge what a resumed run wrote after its checkpoint; a fresh run purges any older events in its folder.
    tracker = Tracker(run_dir, purge_step=step + 1 if resume_from else 0, progress=cfg.tracking.progress,
                      blocks=list(model.lambdas()))
    start_step = step
    start = time.perf_counter()

    def lambdas() -> dict[str, float]:
        """Mean λ per block (its one λ when lam_shape is scalar)."""
        return {k: v.mean().item() for k, v in model.lambdas().items()}

    def lambda_channels() -> dict[str, list[float]]:
        return {k: v.tolist() for k, v in model.lambdas().items() if v.ndim}

    def save(epoch_rng: torch.Tensor, batch: int, sums) -> None:
        summary["wall_time_s"] = prior_time + time.perf_counter() - start
        checkpoint.save(ckpt_path, {
            "config": config, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": {**checkpoint.rng_state(), "data": epoch_rng},
            "epoch": epoch, "batch": batch, "step": step, "train_sums": sums,
            "best_test_acc": summary["best_test_acc"], "final_test_acc": summary["final_test_acc"],
            "wall_time_s": summary["wall_time_s"],
            "robustness": {k: summary[k] for k in robustness.SUMMARY_KEYS if k in summary},
        })

    lam_start = torch.sigmoid(lam_to_logit(cfg.pattern.lam_init)).item()  # lam_init as the logit holds it

    def finish(status: str, **extra) -> dict:
        lam = lambdas()
        summary.update(status=status, final_lambda=lam, lam_travel={k: v - lam_start for k, v in lam.items()}, step=step,
                       wall_time_s=prior_time + time.perf_counter() - start, **extra)
        if cfg.pattern.lam_shape == "channel":
            summary["final_lambda_channels"] = lambda_channels()
        write_json(run_dir / "summary.json", summary)
        return summary

    if step == 0:
        tracker.scalars({f"lambda/{k}": v for k, v in lambdas().items()}, 0)
    try:
        log.info("training %s on %s (%s, %d steps an epoch, %s, %d CPU threads)", cfg.pattern.name, device,
                 "bf16" if bf16 else "fp32", steps_per_epoch, "compiled" if compiled else "eager",
                 torch.get_num_threads())
        model.train()
        while epoch < t.epochs:
            epoch_rng = gen.get_state()
            if train_sums is None:
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), dtype=torch.long, device=device)
                seen = 0
            else:
                loss_sum, correct, seen = (torch.tensor(train_sums[0], device=device),
                                           torch.tensor(train_sums[1], device=device), train_sums[2])
            epoch_start, seen_before = time.perf_counter(), seen  # a resumed epoch counts from here
            for i, (x, y) in enumerate(train_loader.batches(skip), start=skip):
                loss, out = train_step(forward, optimizer, scheduler, x, y, bf16, cfg.optim.label_smoothing)
                step += 1
                # Kept on the device: read only at log steps, so the loop never waits on the GPU.
                loss_sum += loss.detach().float() * len(y)
                correct += (out.argmax(1) == y).sum()
                seen += len(y)
                if step % t.log_every_n_steps == 0:
                    train_loss = loss_sum.item() / seen
                    if not math.isfinite(train_loss):
                        raise Diverged(f"non-finite training loss at step {step}")
                    lam = lambdas()
                    tracker.scalars({f"lambda/{k}": v for k, v in lam.items()}, step)
                    tracker.show(f"epoch {epoch + 1}/{t.epochs}", i + 1, steps_per_epoch,
                                 f"loss {train_loss:.3f} acc {correct.item() / seen:.3f} "
                                 + describe_lambdas(lam)
                                 + f" {(seen - seen_before) / (time.perf_counter() - epoch_start):.0f} img/s")
                if stop:
                    save(epoch_rng, i + 1, [loss_sum.item(), correct.item(), seen])
                    raise Interrupted(stop[0])
            train_time = time.perf_counter() - epoch_start
            train_loss = loss_sum.item() / seen
            if not math.isfinite(train_loss):
                raise Diverged(f"non-finite training loss at step {step}")
            test_loss, test_acc = evaluate(forward, test_loader, bf16)
            epoch += 1
            skip, train_sums = 0, None
            lam = lambdas()
            tracker.scalars({
                "acc/train": correct.item() / seen, "acc/test": test_acc, "loss/train": train_loss,
                "loss/test": test_loss, "lr": scheduler.get_last_lr()[0],
                "throughput/train_img_s": (seen - seen_before) / train_time,
                **({f"lambda/{k}": v for k, v in lam.items()} if step % t.log_every_n_steps else {}),
            }, step)
            tracker.histograms({f"lambda_channels/{k}": v for k, v in model.lambdas().items() if v.ndim}, step)
            every = cfg.tracking.attention_maps_every
            if (epoch in (1, t.epochs) if every is None else every and epoch % every == 0):
                tracker.attention_maps(model, map_images, test_loader.normalise(map_images.to(device)).float(), step)
            if robust_loader is not None and robustness.due(cfg.eval.corruption_every, epoch, t.epochs):
                summary.update(robustness.run(forward, robust_loader, cfg, bf16, tracker, step))
            summary.update(epochs_completed=epoch, step=step, final_test_acc=test_acc,
                           best_test_acc=max(summary["best_test_acc"], test_acc), final_lambda=lam)
            log.info("epoch %d/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | %s", epoch, t.epochs,
                     train_loss, correct.item() / seen, test_loss, test_acc,
                     describe_lambdas(lam) or "no λ")
            save(gen.get_state(), 0, None)
            finish("running")
        if stop:  # asked to stop during the last evaluation: the checkpoint is saved, say so
            raise Interrupted(stop[0])
        summary = finish("completed")
        if step > start_step:  # a rerun of a finished run adds nothing, not even a second HParams point
            tracker.hparams(summary, cfg)
    except Interrupted as err:
        finish("interrupted", epoch=epoch, signal=str(err))
        raise
    except Diverged as err:
        finish("diverged", error=str(err))
        raise
    finally:
        tracker.close()
    tracker.table(summary)
    return summary

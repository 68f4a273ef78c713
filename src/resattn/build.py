"""Set-up of a run: device, threads, precision, compile, seeding, and the model and optimizer it trains."""

import logging
import random
import shutil

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from resattn.errors import ConfigError
from resattn.external import attention_factory, check_contract, check_stackable, source
from resattn.model import ResidualNet, SimpleCNN
from resattn.resnet import CifarResNet

log = logging.getLogger(__name__)

# torch's own thread count for this process, read before any job changes it: trainer.num_threads=auto
# restores it, so a job with num_threads=1 cannot leave the next job of a multirun at one thread.
DEFAULT_THREADS = torch.get_num_threads()


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


def set_threads(setting) -> int:
    """trainer.num_threads: a number, or auto (torch's default for this process); the count now in force."""
    torch.set_num_threads(DEFAULT_THREADS if setting == "auto" else int(setting))
    return torch.get_num_threads()


FUSED_BF16 = (
    "trainer.precision=bf16: the fused launcher trains in fp32 (bf16 autocast does not reach convolutions under "
    "vmap); use trainer.precision=auto or fp32, or another launcher"
)


def pick_precision(setting: str, device: torch.device, fused: bool, resumed: str | None) -> bool:
    """Whether the run trains in bf16. A resumed run keeps the precision it started in (`resumed`: its checkpoint's),
    whatever trainer.precision=auto would pick on this machine; the fused launcher trains every job of a sweep in
    fp32, a group of one too (bf16 autocast does not reach convolutions under vmap, measured on the CPU)."""
    if fused and "bf16" in (setting, resumed):
        raise ConfigError(
            FUSED_BF16
            if setting == "bf16"
            else "trainer.resume: this run started in bf16 with another launcher; "
            "finish it with that launcher (hydra/launcher=basic)"
        )
    if resumed is not None:
        if (resumed == "bf16") != use_bf16(setting, device):
            log.info("continuing in %s, the precision this run started in", resumed)
        return resumed == "bf16"
    return False if fused else use_bf16(setting, device)


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


def configure_device(device: torch.device) -> None:
    if device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest kernels; TF32 where fp32 runs
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig, num_classes: int) -> ResidualNet:
    """The backbone with the pattern and attention; a module from outside resattn (timm's, the researcher's own)
    is checked against the attention contract on the built model (ConfigError: one line naming it)."""
    p, m = cfg.pattern, cfg.model
    attention = attention_factory(OmegaConf.to_container(cfg.attention, resolve=True))
    common = dict(
        pattern=p.name,
        num_classes=num_classes,
        attention=attention,
        lam_init=float(p.lam_init),
        lam_learnable=p.lam_learnable,
        controlled=p.controlled,
        lam_shape=p.lam_shape,
        width=m.width,
    )
    if m.name == "resnet":
        model = CifarResNet(depth=m.depth, shortcut=m.shortcut, **common)
    else:
        model = SimpleCNN(**common)
    if source(cfg.attention) != "resattn" and p.placement != "none":
        check_contract(model, cfg.attention.name, channels_last=cfg.trainer.channels_last)
    return model


def check_fusable(cfg: DictConfig, model: ResidualNet) -> None:
    """ConfigError when the fused launcher cannot stack this model's attention (torch.func.vmap fails on it);
    resattn's own modules are known to stack and are not tried."""
    if source(cfg.attention) != "resattn" and cfg.pattern.placement != "none":
        check_stackable(model, cfg.attention.name)


def build_optimizer(cfg: DictConfig, named_params: dict[str, torch.Tensor], template: nn.Module, total_steps: int):
    """SGD and its schedule over `named_params`: a module's parameters, or several members' stacked ones, grouped
    by what each is in one model (`template`). SGD is elementwise, so one step moves each stacked member alone."""
    o = cfg.optim
    # No weight decay on BN parameters or on the lambda logits: decay would pull lambda towards 0.5.
    # The logits get their own learning rate (optim.lam_lr_scale): at the base rate lambda barely moves.
    matrix = {n for n, p in template.named_parameters() if p.ndim > 1}
    lam = [p for n, p in named_params.items() if n.endswith("lam_logit")]
    decay = [p for n, p in named_params.items() if n in matrix]
    no_decay = [p for n, p in named_params.items() if n not in matrix and not n.endswith("lam_logit")]
    lrs = [o.lr, o.lr, o.lr * o.lam_lr_scale]
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": o.weight_decay, "lr": lrs[0]},
            {"params": no_decay, "weight_decay": 0.0, "lr": lrs[1]},
            {"params": lam, "weight_decay": 0.0, "lr": lrs[2]},
        ],
        lr=o.lr,
        momentum=o.momentum,
        nesterov=o.momentum > 0,
    )
    if o.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=lrs,
            total_steps=total_steps,
            pct_start=float(o.warmup_frac),
            anneal_strategy="linear",
            cycle_momentum=False,
        )
    elif o.schedule == "step":  # He et al.'s: divided by 10 at 32k and 48k of 64k steps, i.e. at 50% and 75%
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[total_steps // 2, total_steps * 3 // 4], gamma=0.1
        )
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return opt, sched

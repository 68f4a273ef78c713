"""Training speed: the plain loop a researcher would write against resattn's training path.

    python scripts/bench.py                      # defaults of the current device
    python scripts/bench.py --steps 30 --json bench.json
    python scripts/bench.py --model resnet --depth 20 --attention se --pattern p4 --batch-size 128
    python scripts/bench.py --members 10 --skip-plain        # 10 seeds trained as one (hydra/launcher=fused)

(a) plain: a CIFAR10-style dataset of PIL images with torchvision transforms (RandomCrop(32, 4),
    RandomHorizontalFlip, ToTensor, Normalize) through a DataLoader, float32, NCHW.
(b) resattn: uint8 images on the device, batched crop/flip, channels_last, and the trainer's
    precision and compile defaults (engine.train_step, the same step the trainer runs); with --members N,
    N models stacked as the fused launcher trains them (images/s then counts every member's images).
Both train the same model, attention and pattern at the same batch size on synthetic data of CIFAR shape,
so it runs offline. Reported: images/s, the ratio b/a, achieved GFLOP/s (torch.utils.flop_counter),
its share of the machine's peak measured on the spot (float32 matmul on CPU, bf16 on CUDA) and
peak memory.
"""

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from resattn import data
from resattn.attention import ATTENTIONS
from resattn.build import build_optimizer, pick_device, use_bf16, use_compile
from resattn.engine import stack_batches, train_step
from resattn.evaluate import evaluate
from resattn.members import stack
from resattn.model import PATTERNS, SimpleCNN
from resattn.resnet import DEPTHS, SHORTCUTS, CifarResNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def make_model(args) -> torch.nn.Module:
    if args.model == "resnet":
        return CifarResNet(args.depth, args.pattern, args.attention, shortcut=args.shortcut, width=args.width)
    return SimpleCNN(args.pattern, attention=args.attention, width=args.width)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best GFLOP/s of a large square matmul: the machine's practical dense peak for dtype."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):  # warm up clocks and kernels before timing
        a @ b
    best = 0.0
    for _ in range(10 if device.type == "cpu" else 30):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def step_flops(model, batch: torch.Tensor, labels: torch.Tensor) -> float:
    """FLOPs of one forward and backward pass, per image."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(batch), labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch)


class PlainCIFAR(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: a PIL image from uint8 HWC, then the transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's resident peak


def endless(epoch):
    """Batches from epoch() after epoch(), for as many steps as the timing asks."""
    while True:
        yield from epoch()


def timed(run_steps, steps: int, warmup: int, batch_size: int, device) -> float:
    run_steps(warmup)
    sync(device)
    t = time.perf_counter()
    run_steps(steps)
    sync(device)
    return steps * batch_size / (time.perf_counter() - t)


def plain(args, images, labels, mean, std, device) -> float:
    import torchvision.transforms as T

    transform = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean.tolist(), std.tolist())]
    )
    loader = torch.utils.data.DataLoader(
        PlainCIFAR(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), transform),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    torch.manual_seed(0)
    model = make_model(args).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    batches = endless(lambda: iter(loader))

    def run_steps(n):
        for _ in range(n):
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return timed(run_steps, args.steps, args.warmup, args.batch_size, device)


def project(args, images, labels, mean, std, device, bf16: bool, compiled: bool) -> tuple[float, dict]:
    """Images/s of the trainer's own step (engine.train_step) over --members models trained as one."""
    torch.manual_seed(0)
    fused = args.members > 1
    models = [make_model(args).to(device) for _ in range(args.members)]
    if not fused:  # the trainer's layout: channels_last for one member, NCHW under vmap
        models = [m.to(memory_format=torch.channels_last) for m in models]
    members = stack(models)
    # the trainer's own optimizer config, at a learning rate that keeps a long benchmark from diverging
    cfg = OmegaConf.create({"optim": {**OmegaConf.load(CONFIGS / "optim" / "sgd.yaml"), "lr": 0.05}})
    opt, sched = build_optimizer(cfg, members.params, members.template, total_steps=10**6)
    if compiled:
        members.compile()
    dtype = torch.bfloat16 if bf16 else torch.float32
    loaders = [
        data.Loader(
            data.Split(images, labels),
            args.batch_size,
            mean,
            std,
            device,
            dtype,
            not fused,
            augment=True,
            generator=torch.Generator().manual_seed(m),
            drop_last=True,
        )
        for m in range(args.members)
    ]
    batches = endless(lambda: zip(*(loader.batches() for loader in loaders)))
    active = torch.ones(args.members, dtype=torch.bool, device=device)

    def run_steps(n):
        for _ in range(n):
            x, y = stack_batches(next(batches))
            train_step(members, opt, sched, x, y, active, bf16, 0.1)

    speed = timed(run_steps, args.steps, args.warmup, args.batch_size * args.members, device)
    extra = {}
    if args.eval_images:
        test = data.Loader(
            data.Split(images[: args.eval_images], labels[: args.eval_images]),
            1000,
            mean,
            std,
            device,
            dtype,
            not fused,
        )
        t = time.perf_counter()
        evaluate(members, test, bf16)
        sync(device)
        extra["eval_img_s"] = args.eval_images * args.members / (time.perf_counter() - t)
    return speed, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="simplecnn", choices=["simplecnn", "resnet"])
    parser.add_argument("--depth", type=int, default=20, choices=DEPTHS, help="resnet: 6n+2")
    parser.add_argument("--shortcut", default="A", choices=list(SHORTCUTS), help="resnet: zero-padding or projection")
    parser.add_argument("--attention", default="cbam", choices=list(ATTENTIONS))
    parser.add_argument("--pattern", default="p3_controlled", choices=list(PATTERNS))
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--members", type=int, default=1, help="models trained as one (the fused launcher's members)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps, after --warmup steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=50_000, help="synthetic training images (CIFAR-10 has 50,000)")
    parser.add_argument("--eval-images", type=int, default=0, help="also time evaluation over this many images")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    device = pick_device(args.device)
    bf16 = use_bf16(args.precision, device) and args.members == 1  # fused members train in fp32, as the trainer
    # auto: what the trainer picks for a default 30-epoch CIFAR-10 run
    compiled = use_compile(
        {"auto": "auto", "true": True, "false": False}[args.compile], device, 30 * (50_000 // args.batch_size)
    )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    mean, std = data.channel_stats(images[:5000])

    probe = make_model(args).to(device)
    flops = step_flops(probe, torch.randn(8, 3, 32, 32, device=device), torch.zeros(8, dtype=torch.long, device=device))
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, peak_dtype)

    result = {
        "device": str(torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model,
        "depth": args.depth if args.model == "resnet" else None,
        "attention": args.attention,
        "pattern": args.pattern,
        "width": args.width,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "members": args.members,
        "gflop_per_image": flops / 1e9,
        "peak_gflops": peak,
        "peak_dtype": str(peak_dtype).split(".")[-1],
        "resattn_precision": "bf16" if bf16 else "fp32",
        "resattn_compiled": compiled,
    }
    if not args.skip_plain:
        result["plain_img_s"] = plain(args, images, labels, mean, std, device)
        result["plain_peak_memory_mb"] = peak_memory_mb(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
    speed, extra = project(args, images, labels, mean, std, device, bf16, compiled)
    result.update(resattn_img_s=speed, **extra, resattn_peak_memory_mb=peak_memory_mb(device))
    result["resattn_gflops"] = speed * flops / 1e9
    result["resattn_share_of_peak"] = result["resattn_gflops"] / peak
    if bf16 and device.type == "cpu":  # the bf16 path also against the bf16 peak, which is higher
        result["peak_gflops_bf16"] = matmul_peak(device, torch.bfloat16)
        result["resattn_share_of_bf16_peak"] = result["resattn_gflops"] / result["peak_gflops_bf16"]
    if "plain_img_s" in result:
        result["speedup"] = speed / result["plain_img_s"]
        result["plain_share_of_peak"] = result["plain_img_s"] * flops / 1e9 / peak

    model = f"ResNet-{args.depth}" if args.model == "resnet" else "SimpleCNN"
    table = Table(
        title=f"resattn bench: {model}, {args.attention} {args.pattern}, width {args.width:g} on "
        f"{result['device']}, {result['threads']} threads, batch {args.batch_size}"
    )
    table.add_column("")
    table.add_column("images/s", justify="right")
    table.add_column("GFLOP/s", justify="right")
    table.add_column(f"of {peak:.0f} GFLOP/s {result['peak_dtype']} peak", justify="right")
    if "plain_img_s" in result:
        table.add_row(
            "(a) plain loop",
            f"{result['plain_img_s']:.1f}",
            f"{result['plain_img_s'] * flops / 1e9:.1f}",
            f"{result['plain_share_of_peak']:.0%}",
        )
    many = f", {args.members} members" if args.members > 1 else ""
    table.add_row(
        f"(b) resattn ({result['resattn_precision']}{', compiled' if compiled else ''}{many})",
        f"{speed:.1f}",
        f"{result['resattn_gflops']:.1f}",
        f"{result['resattn_share_of_peak']:.0%}",
    )
    console = Console()
    console.print(table)
    console.print(
        f"{flops / 1e9:.3f} GFLOP per image per training step"
        + (f"; speed-up b/a {result['speedup']:.2f}x" if "speedup" in result else "")
        + f"; peak memory {result['resattn_peak_memory_mb']:.0f} MB"
        + (f"; evaluation {extra['eval_img_s']:.0f} img/s" if extra else "")
        + (
            f"; {result['resattn_share_of_bf16_peak']:.0%} of the {result['peak_gflops_bf16']:.0f} GFLOP/s "
            "bf16 matmul peak"
            if "peak_gflops_bf16" in result
            else ""
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

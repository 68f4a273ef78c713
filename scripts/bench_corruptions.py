"""Cost of the CIFAR-10-C evaluation: making each corruption, and evaluating a model on the result.

    python scripts/bench_corruptions.py                     # the current device, 1,000 images
    python scripts/bench_corruptions.py --device cpu --images 2000 --threads 2 --json bench_corruptions.json

For each corruption: ms per 1,000 images to corrupt a uint8 batch on the device (the mean over the five
severities, best of --repeats), and ms per 1,000 images of robustness.evaluate_corruptions for one
severity with SimpleCNN (width 1, the trainer's precision default), corruption included. Smooth random
images of CIFAR shape, so it runs offline. The total line estimates eval.corruptions=all with five
severities on the 10,000 test images.
"""

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from resattn import data
from resattn.build import pick_device, use_bf16
from resattn.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from resattn.model import SimpleCNN
from resattn.robustness import evaluate_corruptions


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of fn() over `repeats` runs, after one untimed warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1000, help="evaluation batch (trainer.eval_batch_size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = use_bf16("auto", device)
    g = torch.Generator().manual_seed(0)
    images = F.interpolate(torch.rand(args.images, 3, 8, 8, generator=g), size=32, mode="bicubic").clamp(0, 1)
    images = (images * 255).round().to(torch.uint8)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    mean, std = data.channel_stats(images)
    loader = data.Loader(
        data.Split(images, labels), args.batch_size, mean, std, device, torch.bfloat16 if bf16 else torch.float32
    )
    model = SimpleCNN(pattern="p3_controlled", num_classes=10).to(device).to(memory_format=torch.channels_last)
    per_1000 = 1000 / args.images

    rows = {}
    for name in CORRUPTIONS:
        corrupt_s = sum(
            timed(
                lambda s=s, name=name: corrupt(loader.images, name, s, torch.Generator().manual_seed(0)),
                device,
                args.repeats,
            )
            for s in SEVERITIES
        ) / len(SEVERITIES)
        eval_s = timed(lambda: evaluate_corruptions(model, loader, [name], [3], bf16=bf16), device, args.repeats)  # noqa: B023  (called here, in this iteration)
        rows[name] = {"corrupt_ms_per_1000": 1000 * corrupt_s * per_1000, "eval_ms_per_1000": 1000 * eval_s * per_1000}
    total_s = sum(r["eval_ms_per_1000"] for r in rows.values()) / 1000 * len(SEVERITIES) * 10  # 10,000 images

    table = Table(
        title=f"CIFAR-10-C on {device} ({'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} threads, "
        f"{args.images} images)"
    )
    for column in ("corruption", "corrupt ms / 1,000 img", "corrupt + SimpleCNN eval ms / 1,000 img"):
        table.add_column(column, justify="left" if column == "corruption" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['corrupt_ms_per_1000']:.1f}", f"{r['eval_ms_per_1000']:.0f}")
    console = Console()
    console.print(table)
    console.print(f"eval.corruptions=all, 5 severities, 10,000 test images: about {total_s:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": str(device),
                    "cpu": platform.processor() or platform.machine(),
                    "bf16": bf16,
                    "threads": torch.get_num_threads(),
                    "images": args.images,
                    "per_corruption": rows,
                    "all_5_severities_10000_images_s": total_s,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()

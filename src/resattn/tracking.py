"""What a run leaves behind: TensorBoard events, summary.json, a progress bar and a result table."""

import json
import os
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

# summary.json keys that describe the run rather than its outcome
HPARAM_KEYS = ("pattern", "placement", "controlled", "lam_init", "lam_learnable", "reduction", "spatial_kernel", "seed")


def write_json(path: Path, data: dict) -> None:
    """Atomic: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def custom_scalars_layout() -> dict:
    """One chart of test accuracy across runs, one of lambda per block."""
    return {
        "resattn": {
            "test accuracy": ["Multiline", [r"acc/test"]],
            "lambda block1": ["Multiline", [r"lambda/block1"]],
            "lambda block2": ["Multiline", [r"lambda/block2"]],
        }
    }


class Tracker:
    def __init__(self, run_dir: Path, purge_step: int | None = None, progress: bool = True):
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        if not purge_step:
            self.writer.add_custom_scalars(custom_scalars_layout())
        self.console = Console(stderr=True)
        self.progress = None
        if progress:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task("train", total=None, stats="")
            self.progress.start()

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def show(self, description: str, completed: int, total: int, stats: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=description, completed=completed, total=total, stats=stats)

    @torch.inference_mode()
    def attention_maps(self, model, images: torch.Tensor, x: torch.Tensor, step: int) -> None:
        """For a few fixed images (uint8 `images`, normalised `x`): per block the spatial mask, the gated
        input (channel mean of |gate(v)|, scaled to [0, 1]) as images and the channel mask as a histogram."""
        inputs = {}
        hooks = [b.attn.register_forward_hook(lambda mod, args, out, name=name: inputs.__setitem__(name, args[0]))
                 for name, b in model.blocks.items() if b.attn is not None]
        was_training = model.training
        model.eval()
        try:
            model(x)
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        if not inputs:
            return
        self.writer.add_images("attention/input", images, step)
        for name, v in inputs.items():
            block = model.blocks[name]
            channel, spatial = block.attn.masks(v)
            gated = block.gate(v).float().abs().mean(1, keepdim=True)
            gated = gated / gated.amax((2, 3), keepdim=True).clamp_min(1e-12)
            self.writer.add_images(f"attention/{name}/spatial_mask", spatial.float(), step)
            self.writer.add_images(f"attention/{name}/gated_input", gated, step)
            self.writer.add_histogram(f"attention/{name}/channel_mask", channel.float().flatten(), step)

    def hparams(self, summary: dict) -> None:
        """The HParams tab entry, written into this run itself (add_hparams would make a sub-run)."""
        hp = {k: summary[k] for k in HPARAM_KEYS}
        metrics = {"hparams/best_test_acc": summary["best_test_acc"], "hparams/final_test_acc": summary["final_test_acc"]}
        for event in hparams(hp, metrics):
            self.writer.file_writer.add_summary(event)
        self.scalars(metrics, summary["step"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.writer.close()

    def table(self, summary: dict) -> None:
        table = Table(title=f"resattn run: {self.run_dir}", show_header=False)
        lam = ", ".join(f"{k} {v:.4f}" for k, v in summary["final_lambda"].items()) or "-"
        rows = {
            "pattern": f"{summary['pattern']} (controlled={summary['controlled']}, lam_init={summary['lam_init']:g}, "
                       f"learnable={summary['lam_learnable']})",
            "seed": str(summary["seed"]),
            "epochs": f"{summary['epochs_completed']}/{summary['epochs']}",
            "best test acc": f"{summary['best_test_acc']:.4f}",
            "final test acc": f"{summary['final_test_acc']:.4f}",
            "final λ": lam,
            "wall time": f"{summary['wall_time_s']:.1f} s",
            "status": summary["status"],
        }
        for key, value in rows.items():
            table.add_row(key, value)
        self.console.print(table)

"""What a run leaves behind: TensorBoard events, summary.json, a progress bar and a result table."""

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader, RawEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter

from resattn.errors import flatten

log = logging.getLogger(__name__)

# Metrics of the HParams tab: summary.json keys, logged as scalars under summary/ (after acc/ and lambda/)
METRICS = ("best_test_acc", "final_test_acc", "best_val_acc", "final_val_acc", "robust_acc")  # those absent skipped


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


def events_reach(run_dir: Path) -> tuple[int, bool] | None:
    """(the last step, whether the HParams entry is there) over the run's TensorBoard event files, read with
    TensorBoard's own record reader (it checks every record's checksum and stops at a cut one); None without
    event files. The light loader, not EventAccumulator: both take the time of the checksums, and these two
    facts need no per-tag store."""
    files = sorted(Path(run_dir).glob("events.out.tfevents.*"))
    if not files:
        return None
    last, hparams = -1, False
    for file in files:
        for event in EventFileLoader(str(file)).Load():
            last = max(last, event.step)
            hparams = hparams or any(v.tag == metadata.SESSION_START_INFO_TAG for v in event.summary.value)
    return last, hparams


def completion(run_dir: Path) -> str | None:
    """None when the run in `run_dir` is complete: its summary.json says completed, its TensorBoard events reach
    the summary's last step, and its HParams entry is there. Otherwise the short reason it is not."""
    summary_file = Path(run_dir) / "summary.json"
    summary = read_summary(run_dir)
    if not isinstance(summary, dict):
        return "summary.json cannot be read" if summary_file.exists() else "no summary.json"
    if summary.get("status") != "completed":
        return f"summary.json says {summary.get('status', 'no status')}"
    try:
        reached = events_reach(run_dir)
    except Exception as err:  # an unreadable file: TensorBoard's reader names the problem
        return f"its TensorBoard events cannot be read ({type(err).__name__}: {str(err).splitlines()[0]})"
    step = summary.get("step", 0)
    if reached is None:
        return "summary.json says completed, but it has no TensorBoard events"
    if reached[0] < 0:
        return "summary.json says completed, but its TensorBoard events hold no readable record"
    if reached[0] < step:
        return f"summary.json says completed at step {step}, but its TensorBoard events stop at step {reached[0]}"
    return None if reached[1] else "summary.json says completed, but its TensorBoard events hold no HParams entry"


def custom_scalars_layout(blocks) -> dict:
    """Test accuracy, corrupted test accuracy and one chart of λ per block, each across runs."""
    exact = lambda tag: f"^{re.escape(tag)}$"  # noqa: E731  (a tag regex: lambda/block1 must not match block10)
    charts = {
        "test accuracy": ["Multiline", [exact("acc/test")]],
        "corrupted test accuracy (mean)": ["Multiline", [exact("acc/corrupt/mean")]],
    }
    charts.update({f"lambda {block}": ["Multiline", [exact(f"lambda/{block}")]] for block in blocks})
    return {"resattn": charts}


# The keys every comparison varies: marked as differing in every run, even one that varies nothing. TensorBoard
# takes the columns of one run's record (the first it finds) and ticks the first five, differing keys first:
# without this, a logdir of single runs and sweeps showed attention, data, model, width and lr, not these.
ALWAYS_SHOWN = ("pattern.name", "seed")


def hparam_value(value):
    """An HParams value TensorBoard shows as written: booleans as true/false (not 1.0), integers as text
    (a number is a float64 there, shown as 0.0000), lists as text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return value if isinstance(value, (float, str)) else json.dumps(value)


def trial_name(values: dict, shown: list[str], run_dir: Path) -> str:
    """The HParams trial name: a sweep job's varied values, short (a config group by its choice alone,
    another key by its last part: "se baseline seed=0"), or a single run's folder name; then the folder
    above it. The values come first, where TensorBoard's column cuts a long name."""
    parts = [str(values[k]) if k.endswith(".name") else f"{k.rsplit('.', 1)[-1]}={values[k]}" for k in shown]
    return f"{' '.join(parts) or run_dir.name} ({run_dir.parent.name})"


def hparam_info(name: str, value, varied: bool) -> api_pb2.HParamInfo:
    """`differs` puts a sweep's varied keys first: TensorBoard ticks the first five columns."""
    info = api_pb2.HParamInfo(name=name, display_name=name, differs=varied or name in ALWAYS_SHOWN)
    if isinstance(value, str):
        info.type = api_pb2.DATA_TYPE_STRING
        if value in ("true", "false"):  # the whole domain: a filter with both boxes ticked hides no run
            info.domain_discrete.extend(["false", "true"])
    else:
        info.type = api_pb2.DATA_TYPE_FLOAT64
    return info


def model_rows(summary: dict) -> dict[str, str]:
    """The panel's model and attention rows (summaries written before they were recorded have neither)."""
    if "model" not in summary:
        return {}
    depth = f"-{summary['depth']}" if summary["model"] == "resnet" and summary.get("depth") else ""
    attention = "none (baseline)" if summary.get("placement") == "none" else summary.get("attention", "-")
    return {"model": f"{summary['model']}{depth}, width {summary['width']:g}", "attention": attention}


def pattern_cell(summary: dict) -> str:
    """The pattern and, where it has a λ gate, the gate's settings (a run without one has no λ to describe)."""
    if not summary["controlled"]:
        return f"{summary['pattern']} (no λ gate)"
    return f"{summary['pattern']} (controlled, lam_init={summary['lam_init']:g}, learnable={summary['lam_learnable']})"


def hparams_summary(tag: str, **data) -> summary_pb2.Summary:
    """One HParams plugin record (experiment, session start or end), as the plugin's own summaries write it."""
    summary = summary_pb2.Summary()
    content = plugin_data_pb2.HParamsPluginData(**data)
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(content), tensor=metadata.NULL_TENSOR)
    return summary


def spatial_map_image(images: torch.Tensor, mask: torch.Tensor, title: str) -> np.ndarray:
    """The input images in colour above their spatial masks as heatmaps, the colours stretched to the
    masks' own range (shown by the colour bar and the title). HWC uint8."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    m = F.interpolate(mask.float(), size=images.shape[-2:], mode="nearest")[:, 0].cpu()
    low, high = m.min().item(), m.max().item()
    heat = colormaps["viridis"](((m - low) / max(high - low, 1e-12)).numpy())[..., :3]
    pics = images.permute(0, 2, 3, 1).cpu().numpy() / 255
    gap = np.ones((2, pics.shape[2] * len(pics), 3))
    grid = np.concatenate([np.concatenate(list(pics), 1), gap, np.concatenate(list(heat), 1)])
    fig = Figure(figsize=(8, 2.1), dpi=100)
    fig.subplots_adjust(left=0.01, right=0.92, top=0.88, bottom=0.02)
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{title}: mask from {low:.4g} (dark) to {high:.4g} (yellow)", fontsize=9)
    fig.colorbar(ScalarMappable(Normalize(low, high), "viridis"), ax=ax, fraction=0.015, pad=0.01)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def gate_effect(v: torch.Tensor, out: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a module without masks did to v, from its input and output: |A(v)*v| / |v|, each summed over the
    channels (spatial, (B, 1, H, W)) or over the positions (channel, (B, C, 1, 1)) before dividing. For a
    gate it is the |v|-weighted mean of the gate's values: the mask itself for a channel or a spatial gate."""
    a, b = out.float().abs(), v.float().abs()
    eps = 1e-6 * b.mean() + 1e-12  # a position or channel that v leaves at zero: no division by zero
    return {
        "spatial": a.sum(1, keepdim=True) / (b.sum(1, keepdim=True) + eps),
        "channel": a.sum((2, 3), keepdim=True) / (b.sum((2, 3), keepdim=True) + eps),
    }


class Tracker:
    """TensorBoard tags: acc/, lambda/ (first in Time Series, which sorts groups by name and opens the
    first two), then loss/, lr, maps/ (attention maps), summary/ (the HParams metrics), throughput/."""

    def __init__(self, run_dir: Path, purge_step: int | None = None, progress: bool = True, blocks=()):
        self.run_dir = Path(run_dir)
        self.effect_said = False  # the log line on maps seen from outside, once a run
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        if not purge_step:
            self.writer.add_custom_scalars(custom_scalars_layout(blocks))
        self.console = Console(stderr=True)
        self.progress = None
        if progress and self.console.is_terminal:  # a live display in a log file would leave its frames there
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

    def histograms(self, values: dict[str, torch.Tensor], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_histogram(tag, value.float(), step)

    def show(self, description: str, completed: int, total: int, stats: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=description, completed=completed, total=total, stats=stats)

    @torch.inference_mode()
    def attention_maps(self, model, images: torch.Tensor, x: torch.Tensor, step: int) -> None:
        """For a few fixed images (uint8 `images`, normalised `x`), per block with attention: the spatial mask
        beside the images (maps/<block>/spatial) and the channel mask's histogram (maps/<block>/channel). A module
        without masks(v) (timm's) is seen from outside instead: maps/<block>/effect_spatial and effect_channel."""
        seen = {}
        hooks = [
            b.attn.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, (args[0], out)))
            for name, b in model.blocks.items()
            if b.attn is not None
        ]
        was_training = model.training
        model.eval()
        try:
            model(x)
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        for name, (v, out) in seen.items():
            attn = model.blocks[name].attn
            if hasattr(attn, "masks"):
                self.maps(name, "", "attention", attn.masks(v), images, step)
            else:
                self.say_effect_once(type(attn).__name__)
                self.maps(name, "effect_", "gate effect |A(v)*v| / |v|", gate_effect(v, out), images, step)

    def maps(self, block: str, prefix: str, what: str, masks: dict, images: torch.Tensor, step: int) -> None:
        if "spatial" in masks:
            image = spatial_map_image(images, masks["spatial"], f"{block} spatial {what}, step {step}")
            self.writer.add_image(f"maps/{block}/{prefix}spatial", image, step, dataformats="HWC")
        if "channel" in masks:
            self.writer.add_histogram(f"maps/{block}/{prefix}channel", masks["channel"].float().flatten(), step)

    def say_effect_once(self, module: str) -> None:
        if not self.effect_said:
            log.info(
                "%s has no masks(v): TensorBoard's maps/*/effect_* show its effect from outside, |A(v)*v| / |v| "
                "summed over channels (effect_spatial) or over positions (effect_channel)",
                module,
            )
            self.effect_said = True

    def hparams(self, summary: dict, cfg: DictConfig) -> None:
        """The HParams tab entry, written into this run itself (add_hparams would make a sub-run): the config
        keys of tracking.hparams and the keys a sweep varies (tracking.varied: first, and ticked) against
        METRICS. The trial name: see trial_name."""
        config = flatten(OmegaConf.to_container(cfg, resolve=True))
        keys, varied = list(cfg.tracking.hparams), list(cfg.tracking.get("varied") or [])
        values = {}
        for key in [*varied, *keys]:
            node = config.get(key, config.get(f"{key}.name"))  # a varied config group: its name
            if node is not None:
                values.setdefault(key if key in config else f"{key}.name", hparam_value(node))
        shown = {k for k in values if k in varied or k.removesuffix(".name") in varied}
        metrics = {f"summary/{k}": summary[k] for k in METRICS if summary.get(k) is not None}
        experiment = api_pb2.Experiment(
            hparam_infos=[hparam_info(k, v, k in shown) for k, v in values.items()],
            metric_infos=[
                api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag.split("/")[1]) for tag in metrics
            ],
        )
        start = plugin_data_pb2.SessionStartInfo(
            group_name=trial_name(values, [k for k in values if k in shown], self.run_dir)
        )
        for key, value in values.items():
            if isinstance(value, str):
                start.hparams[key].string_value = value
            else:
                start.hparams[key].number_value = value
        for event in (
            hparams_summary(metadata.EXPERIMENT_TAG, experiment=experiment),
            hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
            hparams_summary(
                metadata.SESSION_END_INFO_TAG,
                session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS),
            ),
        ):
            self.writer.file_writer.add_summary(event)
        self.scalars(metrics, summary["step"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.writer.close()

    def table(self, summary: dict) -> None:
        """The end-of-run panel: what the run was (model, attention, pattern, seed) and how it ended."""
        # the folder on a line of its own, never wrapped: as the table's title rich would break the path mid-word
        # to the table's width (a log or a pipe gets 80 columns); a terminal wraps the line itself
        self.console.print(f"resattn run: {self.run_dir}", soft_wrap=True, markup=False, highlight=False)
        table = Table(show_header=False)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")  # a long folder path may fold; names fit in 80 columns
        lam = ", ".join(f"{k} {v:.4f}" for k, v in summary["final_lambda"].items()) or "-"
        rows = {
            **model_rows(summary),
            "pattern": pattern_cell(summary),
            "seed": str(summary["seed"]),
            "epochs": f"{summary['epochs_completed']}/{summary['epochs']}",
            # with a validation split the test set is read at the end only: no best test acc
            **{
                name: f"{summary[key]:.4f}"
                for name, key in (
                    ("best val acc", "best_val_acc"),
                    ("final val acc", "final_val_acc"),
                    ("best test acc", "best_test_acc"),
                    ("final test acc", "final_test_acc"),
                )
                if summary.get(key) is not None
            },
            "final λ": lam,
            "wall time": f"{summary['wall_time_s']:.1f} s",
            "status": summary["status"],
        }
        for key, value in rows.items():
            table.add_row(key, value)
        self.console.print(table)


def drop_images(events_file: Path) -> int:
    """Rewrite a TensorBoard events file without its image summaries (the attention maps, drawn over the data
    set's test images: what may not travel with a committed copy of a study); the images dropped."""
    events_file = Path(events_file)
    records = list(RawEventFileLoader(str(events_file)).Load())
    tmp, dropped = events_file.with_name(events_file.name + ".tmp"), 0
    with open(tmp, "wb") as f:
        writer = RecordWriter(f)
        for raw in records:
            event = event_pb2.Event.FromString(raw)
            if event.HasField("summary"):
                values = [v for v in event.summary.value if not v.HasField("image")]
                dropped += len(event.summary.value) - len(values)
                if not values:
                    continue  # an event of images alone
                del event.summary.value[:]
                event.summary.value.extend(values)
            writer.write(event.SerializeToString())
    os.replace(tmp, events_file)
    return dropped

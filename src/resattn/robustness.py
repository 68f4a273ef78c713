"""Accuracy under the CIFAR-10-C corruptions (the `eval` keys, checked in resattn.config)."""

import copy
import statistics
import time
import zlib

import torch

from resattn import data
from resattn.config import resolve_names, resolve_severities
from resattn.corruptions import corrupt
from resattn.evaluate import evaluate

# what run() adds to summary.json (and the checkpoint keeps, so a rerun of a finished run still has it)
SUMMARY_KEYS = ("corruption_acc", "robust_acc", "corruption_eval_s")


def corruption_seed(seed: int, name: str, severity: int) -> int:
    """A seed of its own for each (name, severity), stable across processes (crc32, not hash())."""
    return zlib.crc32(f"{seed}/{name}/{severity}".encode())


def evaluate_corruptions(
    model, loader: data.Loader, names: list[str], severities: list[int], seed: int = 0, bf16: bool = False
) -> list[dict[str, dict[int, float]]]:
    """{name: {severity: accuracy}} of `model` on the loader's images under each corruption, one per member
    (a plain model is one member; resattn.members.Members are evaluated together, on the same images).

    `loader`: an evaluation loader (no augmentation), e.g. the test loader or one over a subset of the
    test split. Its uint8 images are corrupted on their device, a whole set at a time, then evaluated
    in its batches and with its normalisation by resattn.evaluate. The noise of each (name, severity)
    comes from its own CPU generator seeded from (seed, name, severity): every evaluation in a run, and
    every run with the same seed and images, on any device, sees the same corrupted images, whatever
    other names are chosen."""
    corrupted = copy.copy(loader)  # shares labels, batch size and normalisation; only the images change
    results: list[dict[str, dict[int, float]]] = []
    for name in names:
        for severity in severities:
            generator = torch.Generator().manual_seed(corruption_seed(seed, name, severity))
            corrupted.images = corrupt(loader.images, name, severity, generator)
            accs = evaluate(model, corrupted, bf16)[1]
            results = results or [{} for _ in accs]
            for member, acc in zip(results, accs):
                member.setdefault(name, {})[severity] = acc
    return results


def summarise(corruption_acc: dict[str, dict[int, float]]) -> tuple[dict[str, float], float]:
    """(each corruption's accuracy averaged over its severities, robust_acc: the mean over every (name, severity)).

    `corruption_acc` must hold at least one accuracy (statistics.StatisticsError otherwise)."""
    per_name = {name: statistics.fmean(by_severity.values()) for name, by_severity in corruption_acc.items()}
    robust_acc = statistics.fmean(acc for by_severity in corruption_acc.values() for acc in by_severity.values())
    return per_name, robust_acc


def corruption_loader(cfg, test: data.Split, test_loader: data.Loader) -> data.Loader | None:
    """What eval.corruptions is measured on: a seeded, class-balanced subset of the test split (the same
    images for every run of a study, chosen by data.subset_seed), batched like the test loader; None when off."""
    if not resolve_names(cfg.eval.corruptions):
        return None
    keep = data.balanced_subset(
        test.labels, cfg.eval.corruption_test_size, cfg.data.subset_seed, "eval.corruption_test_size"
    ).to(test_loader.images.device)
    loader = copy.copy(test_loader)
    loader.images, loader.labels = test_loader.images[keep], test_loader.labels[keep]
    return loader


def due(every: int | None, epoch: int, epochs: int) -> bool:
    """Evaluate under corruptions after this epoch? Always after the last one."""
    return epoch == epochs or (every is not None and epoch % every == 0)


def run(model, loader: data.Loader, cfg, bf16: bool, trackers: list, step: int) -> list[dict]:
    """Evaluate every member, log acc/corrupt/<name> (mean over severities) and acc/corrupt/mean into each
    member's tracker (None: log nothing); each member's summary entries."""
    start = time.perf_counter()
    accs = evaluate_corruptions(
        model,
        loader,
        resolve_names(cfg.eval.corruptions),
        resolve_severities(cfg.eval.severities),
        seed=cfg.data.subset_seed,
        bf16=bf16,
    )
    seconds = time.perf_counter() - start
    entries = []
    for acc, tracker in zip(accs, trackers):
        per_name, robust_acc = summarise(acc)
        if tracker is not None:  # None: a member that diverged records nothing more
            tracker.scalars(
                {**{f"acc/corrupt/{name}": a for name, a in per_name.items()}, "acc/corrupt/mean": robust_acc}, step
            )
        entries.append(dict(zip(SUMMARY_KEYS, (acc, robust_acc, seconds))))
    return entries

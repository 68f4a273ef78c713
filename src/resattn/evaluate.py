"""Clean evaluation: mean loss and accuracy over a loader's split, for one model or every member at once."""

import torch
import torch.nn.functional as F

from resattn import data
from resattn.members import Members


@torch.inference_mode()
def evaluate(model, loader: data.Loader, bf16: bool) -> tuple[list[float], list[float]]:
    """(mean cross-entropy, accuracy) per member over the loader's split, in one pass over its batches.

    `model(x)` gives logits (batch, classes) for a plain model, or (members, batch, classes) for
    a job's resattn.members.Members called on one batch for all members (shared=True)."""
    was_training = model.training
    model.train(False)
    loss = correct = None
    for x, y in loader.batches():
        with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            out = model(x, shared=True) if isinstance(model, Members) else model(x)
        out = out if out.ndim == 3 else out.unsqueeze(0)
        batch_loss = F.cross_entropy(out.float().flatten(0, 1), y.repeat(len(out)), reduction="none")
        batch_loss = batch_loss.view(len(out), -1).sum(1)
        batch_correct = (out.argmax(-1) == y).sum(1)
        loss = batch_loss if loss is None else loss + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
    model.train(was_training)
    n = len(loader.labels)
    return (loss.double() / n).tolist(), (correct.double() / n).tolist()

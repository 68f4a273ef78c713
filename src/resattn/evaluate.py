"""Clean evaluation: mean loss and accuracy of a model over a loader's split."""

import torch
import torch.nn.functional as F

from resattn import data


@torch.inference_mode()
def evaluate(model, loader: data.Loader, bf16: bool) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the loader's split."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=loader.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=loader.labels.device)
    for x, y in loader.batches():
        with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            out = model(x)
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    n = len(loader.labels)
    return loss.item() / n, correct.item() / n

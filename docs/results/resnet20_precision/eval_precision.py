"""The finished ResNet-20's checkpoint evaluated in bf16 and fp32, on the test split and on the training split
(unaugmented): does bf16 evaluation cost accuracy, and how big is the generalization gap?

    python docs/results/resnet20_precision/eval_precision.py outputs/studies/resnet20_seed0/checkpoint.pt [threads]

wrote eval_precision.out beside it (2026-12-03, one thread, the two-core container). The checkpoint is not kept
in the repository (a completed run's export leaves it out); the command of docs/results.md section 8 makes it.
"""

import sys

import torch
from omegaconf import OmegaConf

from resattn import data
from resattn.build import build_model, set_threads
from resattn.evaluate import evaluate

set_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
ck = torch.load(sys.argv[1], weights_only=True, map_location="cpu")
cfg = OmegaConf.create(ck["config"])
ds = data.load(cfg.data)
model = build_model(cfg, len(ds.classes))
model.load_state_dict(ck["model"])
model = model.to(memory_format=torch.channels_last)
mean, std = data.channel_stats(ds.train.images)
for bf16 in (True, False):
    dtype = torch.bfloat16 if bf16 else torch.float32
    for name, split in (("test", ds.test), ("train", ds.train)):
        loader = data.Loader(split, 1000, mean, std, "cpu", dtype, True)
        loss, acc = evaluate(model, loader, bf16)
        print(f"{'bf16' if bf16 else 'fp32'} {name}: loss {loss[0]:.4f} acc {acc[0]:.4f}", flush=True)

#!/usr/bin/env bash
# The whole GPU check of docs/benchmarks.md in one go (about 5 minutes on one H200):
#   bash scripts/gpu_check.sh CIFAR_DIR OUT_DIR
# CIFAR_DIR holds train/ and test/ in ImageFolder layout (e.g. the unpacked cifar10-jpeg copy);
# OUT_DIR receives bench.json, bench.txt, epoch.txt and default_run.txt with the figures.
set -euo pipefail
cifar=${1:?usage: gpu_check.sh CIFAR_DIR OUT_DIR}
out=${2:?usage: gpu_check.sh CIFAR_DIR OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"

# 1. Steps per second: the plain loop against resattn's path, same model and batch (synthetic data).
python scripts/bench.py --steps 50 --warmup 20 --workers 8 --eval-images 10000 --json "$out/bench.json" \
    | tee "$out/bench.txt"

# 2. One CIFAR-10 epoch (50,000 images) including evaluation: the second epoch of a two-epoch run
#    (the first pays for compiling), timed between the two epochs' acc/test events.
python -m train data=folder data.root="$cifar" trainer.epochs=1 tracking.progress=false \
    hydra.run.dir="$out/warm" > /dev/null
/usr/bin/time -f "two-epoch run wall %e s" python -m train data=folder data.root="$cifar" trainer.epochs=2 \
    tracking.progress=false trainer.log_every_n_steps=1000 hydra.run.dir="$out/epoch" 2>&1 | tee "$out/epoch.txt"

# 3. The default 30-epoch run, start-up included.
/usr/bin/time -f "default run wall %e s" python -m train data=folder data.root="$cifar" tracking.progress=false \
    hydra.run.dir="$out/default" 2>&1 | tee "$out/default_run.txt"
python - "$out" <<'PY'
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for run in ("epoch", "default"):
    s = json.load(open(f"{sys.argv[1]}/{run}/summary.json"))
    acc = EventAccumulator(f"{sys.argv[1]}/{run}"); acc.Reload()
    img_s = [round(e.value) for e in acc.Scalars("throughput/train_img_s")]
    ends = [e.wall_time for e in acc.Scalars("acc/test")]
    epoch_s = [round(b - a, 2) for a, b in zip(ends, ends[1:])]  # each epoch after the first, evaluation included
    print(run, "best", s["best_test_acc"], "final", s["final_test_acc"], "wall", round(s["wall_time_s"], 1),
          "train img/s", img_s, "epoch s (from the 2nd)", epoch_s)
PY

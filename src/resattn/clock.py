"""The piece's clock: `trainer.deadline` counts from the moment the command started, start-up included.

A study runs in pieces (a SLURM slot, a lent GPU, a session): one deadline for the whole piece, after which
running jobs save and stop and no new job starts. The start is taken by the command's entry point (src/train.py,
before its heavy imports) and handed through the environment to every worker process it spawns, so a joblib,
submitit or fused worker counts from the same moment.

On the bottom floor beside errors.py: it imports nothing from resattn.
"""

import os
import time

ENV = "RESATTN_PIECE_STARTED"
STARTED = float(os.environ.get(ENV) or time.time())  # seconds since the epoch: a worker's, its command's


def start_piece(at: float) -> None:
    """The command started at `at` (time.time()): for this process and every process it starts."""
    global STARTED
    STARTED = at
    os.environ[ENV] = repr(at)


def left(deadline) -> float:
    """Seconds until `deadline` (seconds after the piece's start; None: no deadline, infinity)."""
    return float("inf") if deadline is None else STARTED + deadline - time.time()


def passed(deadline) -> bool:
    return left(deadline) <= 0

"""Real CIFAR-10 images (the offline JPEG copy in ../shared/datasets), where the copy is present."""

import json
import os
from pathlib import Path

import pytest

from conftest import run_train


@pytest.mark.slow
def test_folder_data_trains_well_above_chance(cifar_jpeg, tmp_path):
    proc = run_train(
        "data=folder",
        f"data.root={cifar_jpeg}",
        "data.train_size=2000",
        "data.test_size=500",
        "model.width=0.25",
        "trainer.epochs=4",
        "trainer.batch_size=64",
        "optim.lr=0.1",
        "tracking.progress=false",
        f"hydra.run.dir={tmp_path}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "completed"
    assert s["best_test_acc"] > 0.25, s  # chance is 0.10
    # decoded once, cached in the user's cache folder (conftest: the session's own), nothing written beside the data
    assert list((Path(os.environ["XDG_CACHE_HOME"]) / "resattn").glob("*/train-*.pt"))
    assert not (cifar_jpeg / ".resattn_cache").exists()

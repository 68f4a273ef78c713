"""A run's records say exactly how it was trained: the images (by content), the precision and every piece it ran
in; a resume that would change either is refused or keeps what the run started with."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from conftest import ROOT, TINY, run_train
from hydra_plugins.resattn_fused_launcher.fused_launcher import group_jobs
from resattn import build, engine
from resattn.errors import ConfigError, Interrupted


def make(*overrides: str):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=[*TINY, "trainer.compile=false", "trainer.epochs=1", *overrides])


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def bmp_folder(root, value: int):
    """Two classes of 8 images each way, as BMP: the same names and file sizes whatever `value` paints."""
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(8):
                pixels = torch.full((32, 32, 3), (value + 40 * c + i) % 256, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.bmp")
    return root


# a run on bmp_folder's images: every image, small batches (data.root given beside it)
BMP_RUN = ["data=folder", "data.train_size=null", "data.test_size=null", "trainer.batch_size=4"]


def stopped_after_one_step(cfg, run_dir):
    with pytest.raises(Interrupted):
        engine.train(cfg, run_dir, [signal.SIGTERM])  # a stop already asked for: it saves after the first step


def test_a_run_resumes_only_on_the_images_it_started_on(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images, run = bmp_folder(tmp_path / "images", 10), tmp_path / "run"
    folder = BMP_RUN
    stopped_after_one_step(make(*folder, f"data.root={images}"), run)
    moved = tmp_path / "moved"
    shutil.copytree(images, moved)
    bmp_folder(images, 90)  # other pixels under the same names and sizes
    with pytest.raises(ConfigError, match="trained on other images"):
        engine.train(make(*folder, f"data.root={images}"), run)
    assert summary(run)["status"] == "interrupted"  # the refusal changed nothing
    done = engine.train(make(*folder, f"data.root={moved}"), run)  # a moved copy of the same images resumes
    assert done["status"] == "completed" and done["pieces"][1]["start_step"] == 1


def test_a_resumed_run_keeps_its_precision_and_records_each_piece(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(build, "use_bf16", lambda precision, device: True)  # a machine where auto is bf16
    stopped_after_one_step(make(), run)
    monkeypatch.setattr(build, "use_bf16", lambda precision, device: False)  # finished where auto is fp32
    done = engine.train(make("trainer.num_threads=1"), run)
    assert done["precision"] == "bf16"
    first, second = done["pieces"]
    assert (first["precision"], second["precision"]) == ("bf16", "bf16")
    assert (first["start_step"], first["end_step"], second["start_step"], second["end_step"]) == (0, 1, 1, done["step"])
    assert second["num_threads"] == 1 and {
        "device",
        "compiled",
        "torch_version",
        "members",
        "host",
        "started",
        "wall_time_s",
    } <= set(second)
    assert done["wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"])


def test_the_fused_launcher_trains_in_one_precision_and_fails_the_bad_checkpoint_alone():
    assert not build.pick_precision("auto", torch.device("cpu"), fused=True, resumed=None)  # a group of one too
    with pytest.raises(ConfigError, match="fused launcher trains in fp32"):
        build.pick_precision("bf16", torch.device("cpu"), fused=True, resumed=None)
    with pytest.raises(ConfigError, match="started in bf16 with another launcher"):
        build.pick_precision("auto", torch.device("cpu"), fused=True, resumed="bf16")


@pytest.mark.parametrize("jobs, most, sizes", [(11, 10, [6, 5]), (5, 4, [3, 2]), (4, 4, [4]), (7, 3, [3, 2, 2])])
def test_fused_groups_are_of_near_equal_size(jobs, most, sizes, monkeypatch):
    from hydra_plugins.resattn_fused_launcher import fused_launcher

    monkeypatch.setattr(fused_launcher, "refusal", lambda cfg: None)
    monkeypatch.setattr(fused_launcher, "resume_step", lambda cfg: 0)
    monkeypatch.setattr(fused_launcher, "task_config", lambda cfg: cfg)
    cfgs = [make(f"seed={i}") for i in range(jobs)]
    groups = group_jobs(cfgs, most)
    assert sorted(len(g) for g in groups) == sorted(sizes) and sorted(i for g in groups for i in g) == list(range(jobs))


@pytest.mark.slow  # two fused sweeps end to end
def test_a_fused_sweep_in_pieces_keeps_one_precision_and_a_bad_checkpoint_fails_alone(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *TINY,
        "trainer.epochs=2",
        "seed=0,1,2,3,4",
        "hydra/launcher=fused",
        "hydra.launcher.max_members=4",
        f"hydra.sweep.dir={sweep}",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "train", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while not (sweep / "seed=1" / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the first group's first epoch is saved
    first.send_signal(signal.SIGTERM)  # it saves and stops; the second group never starts
    assert first.wait(timeout=240) == 128 + signal.SIGTERM
    (sweep / "seed=0" / "checkpoint.pt").write_bytes(b"cut")
    again = run_train(*args)
    assert again.returncode == 1, again.stderr  # one job did not complete: the sweep says so at its end
    assert "seed=0" in again.stderr and "trainer.resume=false" in again.stderr  # named, with the way out
    assert summary(sweep / "seed=0")["status"] == "interrupted"  # its record is kept as it was
    # the first piece trained seeds 0 and 1 together (5 jobs at most 4: 2 and 3); now seed 1 resumes alone, in the
    # precision of its fused group-mates, and seeds 2 to 4 start together
    for seed, members in ((1, 1), (2, 3), (3, 3), (4, 3)):
        s = summary(sweep / f"seed={seed}")
        assert (s["status"], s["precision"], s["members"]) == ("completed", "fp32", members), seed
        # what ran, not the config's wish (trainer.channels_last is true): a fused stack trains NCHW
        assert (s["fused"], s["memory_format"]) == (members > 1, "contiguous" if members > 1 else "channels_last")
    assert [p["fused"] for p in summary(sweep / "seed=1")["pieces"]] == [True, False]

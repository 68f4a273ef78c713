"""One definition of "the same experiment" (identity.py), for resuming and for the report (issue 16, part 5)."""

import io

import pytest
import torch
from omegaconf import OmegaConf
from rich.console import Console
from test_report import fake_run, rows

from resattn import checkpoint, data, report
from resattn.errors import ConfigError
from resattn.identity import NOT_THE_EXPERIMENT, defines_the_experiment, first_difference

CONFIG = {
    "seed": 0,
    "pattern": {"name": "p1"},
    "optim": {"lr": 0.1},
    "data": {"name": "folder", "root": "/a", "download": False, "train_size": 100},
    "trainer": {
        "device": "cpu",
        "precision": "auto",
        "compile": False,
        "num_threads": 1,
        "epochs": 3,
        "eval_batch_size": 1000,
        "log_every_n_steps": 50,
        "resume": "auto",
        "deadline": None,
    },
    "tracking": {"progress": True},
}


def write_report(root):
    md = report.write_report([root], console=Console(file=io.StringIO(), width=300)).read_text()
    return {r["group"]: r for r in rows(root / "groups.csv")}, md


# ---------------------------------------------------------------- the list


def test_placement_keys_and_their_children_do_not_define_the_experiment():
    for key in NOT_THE_EXPERIMENT:
        assert not defines_the_experiment(key) and not defines_the_experiment(key + ".child")
    for key in ("seed", "optim.lr", "trainer.epochs", "trainer.precision", "data.name", "data.rooted"):
        assert defines_the_experiment(key), key


def test_first_difference_names_the_first_key_that_defines_the_experiment():
    moved = {
        **CONFIG,
        "data": {**CONFIG["data"], "root": "/b"},
        "tracking": {"progress": False},
        "trainer": {**CONFIG["trainer"], "device": "cuda", "num_threads": 8, "deadline": 60},
    }
    assert first_difference(CONFIG, moved) is None
    assert first_difference(CONFIG, {**moved, "optim": {"lr": 0.2}}) == "optim.lr"


# ---------------------------------------------------------------- checkpoint refusal


def test_resuming_refuses_another_experiment_by_name_and_allows_a_move(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"config": CONFIG, "data_fingerprint": "f" * 64, "progress": {"step": 7}})
    with pytest.raises(ConfigError, match=r"made with trainer\.epochs=3, this run has trainer\.epochs=4"):
        checkpoint.load(path, {**CONFIG, "trainer": {**CONFIG["trainer"], "epochs": 4}})
    with pytest.raises(ConfigError, match=r"made with seed=0, this run has seed=1"):
        checkpoint.load(path, {**CONFIG, "seed": 1})
    # every may-change key changed at once: another machine, its data elsewhere, a time limit, quieter logs
    moved = {
        **CONFIG,
        "data": {**CONFIG["data"], "root": "/elsewhere", "download": True},
        "trainer": {
            **CONFIG["trainer"],
            "device": "cuda",
            "compile": True,
            "num_threads": 16,
            "eval_batch_size": 500,
            "log_every_n_steps": 10,
            "resume": "x.pt",
            "deadline": 600,
        },
        "tracking": {"progress": False},
    }
    assert checkpoint.load(path, moved, "f" * 64)["progress"]["step"] == 7
    with pytest.raises(
        ConfigError,
        match=r"trained on other images \(data fingerprint ffffffffffffffff, data.root "
        r"now holds eeeeeeeeeeeeeeee\)",
    ):
        checkpoint.load(path, moved, "e" * 64)


# ---------------------------------------------------------------- the report's groups


def test_two_data_roots_are_never_pooled(tmp_path):
    # runs from before summary.json held a fingerprint: data.root is what says which data they had
    for root, acc in (("/data/a", 0.80), ("/data/b", 0.40)):
        for seed in (0, 1):
            fake_run(tmp_path / f"{root[-1]}_{seed}", "p1", seed, acc, config={"data.root": root})
    groups, md = write_report(tmp_path)
    assert {g: (r["n"], float(r["final_test_acc_mean"])) for g, r in groups.items()} == {
        "data.root=/data/a": ("2", pytest.approx(0.80)),
        "data.root=/data/b": ("2", pytest.approx(0.40)),
    }
    assert "Grouped by: data.root." in md


def test_the_data_fingerprint_decides_not_the_root(tmp_path):
    # the same data in two folders pools; other data under one folder name does not
    for name, root, fingerprint in (("a0", "/x", "f" * 64), ("a1", "/y", "f" * 64), ("b0", "/x", "e" * 64)):
        fake_run(
            tmp_path / name,
            "p1",
            int(name[1]),
            0.5,
            config={"data.root": root},
            summary={"data_fingerprint": fingerprint},
        )
    groups, _ = write_report(tmp_path)
    assert {g: r["n"] for g, r in groups.items()} == {
        f"data.fingerprint={'e' * 16}": "1",
        f"data.fingerprint={'f' * 16}": "2",
    }


def test_two_precisions_are_never_pooled_and_auto_is_what_it_resolved_to(tmp_path):
    for seed, precision in ((0, "bf16"), (1, "bf16"), (0, "fp32")):
        fake_run(
            tmp_path / f"{precision}_{seed}",
            "p1",
            seed,
            0.5 + seed / 100,
            config={"trainer.precision": "auto" if seed == 0 else precision},
            summary={"precision": precision},
        )
    groups, md = write_report(tmp_path)
    assert {g: r["n"] for g, r in groups.items()} == {"trainer.precision=bf16": "2", "trainer.precision=fp32": "1"}
    assert "Grouped by: trainer.precision." in md


def test_a_seed_found_twice_is_counted_once_with_a_note(tmp_path):
    for name, seed, acc in (("first_0", 0, 0.60), ("first_1", 1, 0.70), ("rerun_0", 0, 0.61)):
        fake_run(tmp_path / name, "p1", seed, acc)
    groups, md = write_report(tmp_path)
    (group,) = groups.values()
    assert group["n"] == "2" and group["seeds"] == "0 1"
    assert float(group["final_test_acc_mean"]) == pytest.approx((0.60 + 0.70) / 2)  # the first path's seed 0
    note = [line for line in md.splitlines() if "found twice" in line]
    assert len(note) == 1 and "seed 0 found twice, counted once" in note[0]
    assert "first_0 (completed) kept" in note[0] and "rerun_0 (completed) left out" in note[0]


def test_a_group_mixing_devices_or_torch_versions_says_so_in_one_line(tmp_path):
    placements = [
        {"device_type": "cpu", "torch_version": "2.5.1"},
        {"device_type": "cuda", "torch_version": "2.5.1"},
        {"device_type": "cuda", "torch_version": "2.6.0"},
    ]
    for seed, placement in enumerate(placements):
        fake_run(tmp_path / f"p1_{seed}", "p1", seed, 0.5, summary={"compiled": False, **placement})
    groups, md = write_report(tmp_path)
    assert [r["n"] for r in groups.values()] == ["3"]  # pooled: the same experiment
    (line,) = [line for line in md.splitlines() if "pools runs with different" in line]
    assert "device_type (cpu, cuda)" in line and "torch_version (2.5.1, 2.6.0)" in line and "compiled" not in line


def test_a_run_finished_on_another_device_counts_as_mixing(tmp_path):
    pieces = [{"device_type": "cpu", "torch_version": "2.5.1"}, {"device_type": "cuda", "torch_version": "2.5.1"}]
    fake_run(tmp_path / "p1_0", "p1", 0, 0.5, summary={"device_type": "cuda", "pieces": pieces})
    fake_run(tmp_path / "p1_1", "p1", 1, 0.5, summary={"device_type": "cuda", "pieces": pieces[1:]})
    _, md = write_report(tmp_path)
    (line,) = [line for line in md.splitlines() if "pools runs with different" in line]
    assert "device_type (cpu, cuda)" in line


def test_one_device_and_version_gives_no_mixing_note(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path / f"p1_{seed}", "p1", seed, 0.5, summary={"device_type": "cpu", "torch_version": "2.5.1"})
    _, md = write_report(tmp_path)
    assert "pools runs with different" not in md


# ---------------------------------------------------------------- the data's fingerprint


def synthetic_cfg(**changes):
    return OmegaConf.create(
        {
            "name": "synthetic",
            "num_classes": 4,
            "train_size": 64,
            "test_size": 32,
            "subset_seed": 0,
            "augment": False,
            **changes,
        }
    )


def test_synthetic_data_is_fingerprinted_by_its_images():
    same = data.load(synthetic_cfg()).fingerprint
    assert len(same) == 64 and same == data.load(synthetic_cfg()).fingerprint
    assert same != data.load(synthetic_cfg(subset_seed=1)).fingerprint
    assert same != data.load(synthetic_cfg(train_size=32)).fingerprint


def test_array_fingerprint_changes_with_one_pixel():
    ds = data.load(synthetic_cfg())
    before = data.arrays_fingerprint(ds)
    ds.train.images[0, 0, 0, 0] ^= 1
    assert data.arrays_fingerprint(ds) != before


def image_folder(root, sizes: dict, value: int = 100):
    from PIL import Image

    for rel, side in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(torch.full((side, side, 3), value, dtype=torch.uint8).numpy()).save(path)
    return root


def test_folder_data_is_fingerprinted_by_its_images_not_their_place_names_or_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    files = {f"{split}/{c}/{i}.bmp": 32 for split in ("train", "test") for c in ("cat", "dog") for i in range(2)}

    def cfg(root):
        return OmegaConf.create(
            {
                "name": "folder",
                "root": str(root),
                "train_size": None,  # noqa: E731
                "test_size": None,
                "subset_seed": 0,
                "augment": False,
            }
        )

    first = data.load(cfg(image_folder(tmp_path / "a", files))).fingerprint
    assert first and first == data.load(cfg(image_folder(tmp_path / "b", files))).fingerprint  # a moved copy
    image_folder(tmp_path / "c", files)
    other = data.load(cfg(image_folder(tmp_path / "c", {"train/cat/0.bmp": 40}, value=7))).fingerprint
    assert other != first
    # other pixels under the same names and sizes (BMP: the size follows from the side): other data, and the
    # cache made from the first images is not taken for them
    same_sizes = image_folder(tmp_path / "a", {"train/cat/0.bmp": 32}, value=9)
    assert data.load(cfg(same_sizes)).fingerprint not in (first, other)

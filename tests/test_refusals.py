"""A refused command changes no file of an earlier run or sweep (resattn.job_records): compared byte for byte."""

import hashlib
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_report import fake_run

from conftest import ROOT, TINY, run_train
from resattn import report, study
from resattn.config import validate
from resattn.errors import ConfigError
from resattn.launchers import check_launching
from resattn.report import ReportError
from resattn.study import StudyError


def files(folder: Path) -> dict[str, str]:
    """Every file under `folder`: its path and a hash of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_refused_rerun_leaves_the_finished_run_as_it_was(tmp_path):
    run = tmp_path / "run"
    first = run_train(*TINY, "trainer.epochs=1", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr
    before = files(run)
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log"} <= set(before)
    changed = run_train(*TINY, "trainer.epochs=2", f"hydra.run.dir={run}")
    assert changed.returncode == 2 and "trainer.epochs=1" in changed.stderr.strip().splitlines()[-1]
    assert files(run) == before  # Hydra's record still says epochs 1, and the log has no line of the refused command


def test_a_resumed_run_moves_its_record_into_place_and_appends_to_its_log(tmp_path):
    run = tmp_path / "run"
    assert run_train(*TINY, "trainer.epochs=1", f"hydra.run.dir={run}").returncode == 0
    again = run_train(*TINY, "trainer.epochs=1", "trainer.log_every_n_steps=1", f"hydra.run.dir={run}")
    assert again.returncode == 0, again.stderr
    assert not (run / ".hydra-pending").exists()
    assert "log_every_n_steps=1" in (run / ".hydra" / "overrides.yaml").read_text()  # the started command's record
    assert (run / "train.log").read_text().count("resuming from") == 1  # the second piece's lines, after the first's


def test_a_refused_sweep_rerun_leaves_the_sweep_as_it_was(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert run_train(*args).returncode == 0
    before = files(sweep)
    refused = run_train(*args[:-2], "trainer.epochs=2", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert refused.returncode == 2, refused.stderr
    assert files(sweep) == before


@pytest.mark.parametrize(
    ("arg", "multirun", "says"),
    [
        ("hydra.run.dir=", False, "hydra.run.dir is empty"),
        ("hydra.sweep.dir=", True, "hydra.sweep.dir is empty"),
        ("hydra.run.dir=.", False, "is the working folder or holds it"),
        ("hydra.sweep.dir=..", True, "is the working folder or holds it"),
        ("hydra.run.dir=/proc/resattn/run", False, "cannot make a folder in /proc"),
        ("hydra.sweep.dir=/sys/resattn", True, "cannot make a folder in /sys"),
    ],
)
def test_an_output_folder_that_would_write_in_the_wrong_place_is_refused(arg, multirun, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=says):
        check_launching([arg], multirun)
    assert not any(tmp_path.iterdir())  # the probe left nothing


def test_an_empty_sweep_folder_from_an_unset_variable_writes_nothing(tmp_path):
    (tmp_path / "configs").mkdir()  # stands for a project's files: the sweep would have pooled its runs
    done = run_train("-m", *TINY, "seed=0,1", "hydra.sweep.dir=", cwd=tmp_path)
    assert (
        done.returncode == 2
        and done.stderr.strip() == "error: hydra.sweep.dir is empty (an unset variable?): give the folder to write to"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["configs"]


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("data.num_classes=1", "data.num_classes must be an integer >= 2, got 1"),
        ("data.num_classes=0", "data.num_classes must be an integer >= 2, got 0"),
        ("tracking.hparams=[no.such.key]", "tracking.hparams: no.such.key is no config key"),
    ],
)
def test_a_value_that_would_train_a_degenerate_or_silent_run_is_refused(override, says):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, override])
    with pytest.raises(ConfigError, match=re.escape(says)):
        validate(cfg)


def test_the_default_hparams_pass_for_either_backbone():  # model.depth is resnet's: SimpleCNN's table shows it blank
    for model in ("simplecnn", "resnet"):
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            validate(compose("config", overrides=[*TINY, f"model={model}"]))


def test_one_class_is_refused_in_one_line_before_anything_is_written(tmp_path):
    done = run_train(*TINY, "data.num_classes=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and done.stderr.strip() == "error: data.num_classes must be an integer >= 2, got 1"
    assert not (tmp_path / "run").exists()


def test_joblib_with_no_workers_is_refused_before_hydra_starts():
    with pytest.raises(ConfigError, match="hydra.launcher.n_jobs must be a non-zero integer"):
        check_launching(["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], True)
    check_launching(["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], True)  # every core: joblib's own idiom


def test_a_reference_naming_one_key_twice_is_refused(tmp_path):
    fake_run(tmp_path / "a", "p1")
    with pytest.raises(ReportError, match="--reference gives pattern twice"):
        report.write_report([tmp_path], reference=["pattern=p1", "pattern=p3"])


def test_a_report_into_a_folder_that_cannot_be_made_is_refused(tmp_path):
    fake_run(tmp_path / "a", "p1")
    with pytest.raises(ReportError, match="--out /proc/resattn: cannot make the folder"):
        report.write_report([tmp_path], "/proc/resattn")


def test_study_rows_onto_a_folder_and_status_of_a_hand_edited_summary_are_one_line(tmp_path):
    fake_run(tmp_path / "runs" / "a", "p1", summary={"epochs_completed": "two"})
    with pytest.raises(StudyError, match="is a folder: give the CSV file"):
        study.write_rows(tmp_path / "runs", "s", tmp_path / "runs")
    (job,) = study.study_status(tmp_path / "runs" / "a")
    assert (job.state, job.reason) == (
        "unreadable",
        "summary.json: epochs_completed, wall_time_s or members is not a number",
    )


def test_the_fused_launcher_in_bf16_is_refused_before_hydra_starts():
    with pytest.raises(ConfigError, match="trainer.precision=bf16: the fused launcher trains in fp32"):
        check_launching(["hydra/launcher=fused", "trainer.precision=bf16", "seed=0,1"], True)


def test_the_way_out_of_a_changed_rerun_starts_the_run(tmp_path):
    run = tmp_path / "run"
    assert run_train(*TINY, "trainer.epochs=1", f"hydra.run.dir={run}").returncode == 0
    refused = run_train(*TINY, "trainer.epochs=2", f"hydra.run.dir={run}")
    assert refused.returncode == 2 and "give trainer.resume=false, to start afresh" in refused.stderr
    afresh = run_train(*TINY, "trainer.epochs=2", "trainer.resume=false", f"hydra.run.dir={run}")  # taken literally
    assert afresh.returncode == 0, afresh.stderr[-2000:]
    assert "trainer.epochs=2" in (run / ".hydra" / "overrides.yaml").read_text()

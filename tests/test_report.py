"""The sweep report, on real runs: one real multirun (2 patterns x 2 seeds) of tiny training jobs,
its numbers checked against values computed here, independently, from the runs' summary.json files."""

import csv
import importlib.util
import io
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg
from rich.console import Console
from scipy import stats

from conftest import ROOT, TINY, run_train
from resattn import report

PATTERNS = ("baseline", "p3_controlled")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    # one thread per job: on a small, busy CPU that is several times faster than torch's default
    proc = run_train("-m", f"pattern={','.join(PATTERNS)}", f"seed={','.join(map(str, SEEDS))}", *TINY,
                     "trainer.device=cpu", "trainer.num_threads=1", f"hydra.sweep.dir={sweep_dir}",
                     cwd=tmp_path_factory.mktemp("cwd"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(jobs(sweep_dir)) == {(p, s) for p in PATTERNS for s in SEEDS}
    # the SweepEnd callback wrote the report into the sweep folder
    assert {"report.md", "groups.csv", "runs.csv", "acc_test.png"} <= {p.name for p in sweep_dir.iterdir()}
    return sweep_dir


@pytest.fixture(scope="module")
def made(sweep, tmp_path_factory):
    """The report on the untouched sweep: (out dir, terminal text)."""
    out = tmp_path_factory.mktemp("report")
    terminal = io.StringIO()
    assert report.write_report([sweep], out, console=Console(file=terminal, width=200)) == out / "report.md"
    return out, terminal.getvalue()


def jobs(sweep_dir) -> dict:
    """(pattern, seed) -> job folder, found through each job's own summary.json."""
    found = {}
    for d in sweep_dir.iterdir():
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text())
            found[(s["pattern"], s["seed"])] = d
    return found


def summaries(sweep_dir) -> dict:
    return {key: json.loads((d / "summary.json").read_text()) for key, d in jobs(sweep_dir).items()}


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(text: str) -> float:
    return float(text) if text else math.nan


def expected(values) -> dict:
    """Mean, sample sd and 95% t-interval, computed here with numpy/scipy, not with the report's code."""
    x = np.array(values, dtype=float)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return {"mean": x.mean(), "std": x.std(ddof=1), "ci95_low": lo, "ci95_high": hi}


def edit_summary(run_dir, **changes) -> None:
    s = json.loads((run_dir / "summary.json").read_text())
    s.update(changes)
    (run_dir / "summary.json").write_text(json.dumps(s))


def edit_config(run_dir, old: str, new: str) -> None:
    path = run_dir / ".hydra" / "config.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def copy_sweep(sweep, tmp_path):
    return shutil.copytree(sweep, tmp_path / "sweep")


def test_groups_are_the_patterns_with_stats_computed_by_hand(made, sweep):
    out, _ = made
    s = summaries(sweep)
    groups = {r["pattern.name"]: r for r in rows(out / "groups.csv")}
    assert set(groups) == set(PATTERNS)
    # only pattern differs (seed, device, placement-by-name are not grouping keys)
    assert list(rows(out / "groups.csv")[0])[:4] == ["pattern.name", "group", "n", "seeds"]
    for pattern, row in groups.items():
        assert (row["n"], row["seeds"], row["group"]) == ("2", "0 1", f"pattern={pattern}")
        metrics = {m: [s[pattern, seed][m] for seed in SEEDS] for m in ("best_test_acc", "final_test_acc",
                                                                        "wall_time_s")}
        if pattern == "p3_controlled":
            for block in ("block1", "block2"):
                metrics[f"final_lambda_{block}"] = [s[pattern, seed]["final_lambda"][block] for seed in SEEDS]
        else:
            assert row["final_lambda_block1_mean"] == row["final_lambda_block1_std"] == ""
        for metric, values in metrics.items():
            for stat, value in expected(values).items():
                got = num(row[f"{metric}_{stat}"])
                assert got == pytest.approx(value, rel=1e-9, abs=1e-12), (pattern, metric, stat)


def test_runs_csv_has_one_row_per_run(made, sweep):
    out, _ = made
    s = summaries(sweep)
    runs = rows(out / "runs.csv")
    assert len(runs) == 4 and {r["status"] for r in runs} == {"completed"}
    for r in runs:
        want = s[r["pattern.name"], int(r["seed"])]
        assert num(r["best_test_acc"]) == want["best_test_acc"]
        assert num(r["final_test_acc"]) == want["final_test_acc"]
        assert r["group"] == f"pattern={want['pattern']}"


def test_comparison_with_baseline_is_paired_by_seed(made, sweep):
    out, terminal = made
    s = summaries(sweep)
    comp = rows(out / "comparisons.csv")
    assert [(r["group"], r["reference"], r["metric"]) for r in comp] == [
        ("pattern=p3_controlled", "pattern=baseline", "best_test_acc"),
        ("pattern=p3_controlled", "pattern=baseline", "final_test_acc")]
    for r in comp:
        a = [s["p3_controlled", seed][r["metric"]] for seed in SEEDS]
        b = [s["baseline", seed][r["metric"]] for seed in SEEDS]
        want = stats.ttest_rel(a, b)
        ci = want.confidence_interval(0.95)
        assert r["test"] == "paired" and (r["n"], r["n_ref"]) == ("2", "2")
        assert num(r["diff"]) == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
        if np.ptp(np.subtract(a, b)) > 0:  # equal differences make a zero-width interval and no p-value
            assert num(r["ci95_low"]) == pytest.approx(ci.low, rel=1e-9)
            assert num(r["ci95_high"]) == pytest.approx(ci.high, rel=1e-9)
            assert num(r["p"]) == pytest.approx(want.pvalue, rel=1e-9)
    assert "p3_controlled" in terminal and "Against the reference" in terminal


def test_report_md_links_real_plots(made):
    out, _ = made
    md = (out / "report.md").read_text()
    for section in ("## Groups", "## Comparisons", "## Runs not averaged", "## Plots"):
        assert section in md
    assert "| p3_controlled | 2 | 0 1 |" in md
    assert "None: every run completed." in md
    for name in ("acc_test.png", "lambda.png"):
        assert f"]({name})" in md
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 400 and img.shape[2] in (3, 4)
        assert img[..., :3].std() > 0.01  # something is drawn, not a blank canvas
    # lam_init is the same in every run: no accuracy-vs-lam_init plot, and no link to one
    assert not (out / "acc_vs_lam_init.png").exists() and "acc_vs_lam_init.png" not in md


def test_cli_with_another_reference(sweep, tmp_path):
    # the real command, once (a fresh interpreter costs seconds: resattn imports torch)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(sweep), "--reference",
                           "pattern=p3_controlled", "--out", str(tmp_path / "a")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Groups" in proc.stdout
    s = summaries(sweep)
    comp = rows(tmp_path / "a" / "comparisons.csv")
    assert {(r["group"], r["reference"]) for r in comp} == {("pattern=baseline", "pattern=p3_controlled")}
    best = next(r for r in comp if r["metric"] == "best_test_acc")
    assert num(best["diff"]) == pytest.approx(np.mean([s["baseline", k]["best_test_acc"] - s["p3_controlled", k]
                                                       ["best_test_acc"] for k in SEEDS]), abs=1e-12)


def test_cli_errors_are_messages_not_tracebacks(sweep, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("report_cli", ROOT / "scripts" / "report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    assert cli.main([str(sweep), "--reference", "pattern=p2", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "matches no group" in err and "pattern=baseline" in err
    assert not (tmp_path / "b" / "report.md").exists()  # checked before anything is written
    assert cli.main([str(sweep), "--reference", "nosuchkey=1", "--out", str(tmp_path / "b")]) == 2
    assert "no config key" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    # the reference written before the path: argparse gives the path to --reference, the script takes it back
    assert cli.main(["--reference", "pattern=p3_controlled", str(sweep), "--out", str(tmp_path / "c")]) == 0
    assert {r["reference"] for r in rows(tmp_path / "c" / "comparisons.csv")} == {"pattern=p3_controlled"}


def test_welch_when_the_seeds_differ(sweep, tmp_path):
    root = copy_sweep(sweep, tmp_path)
    src = jobs(root)["baseline", 1]
    extra = shutil.copytree(src, root / "extra_seed")
    edit_config(extra, "\nseed: 1\n", "\nseed: 2\n")
    edit_summary(extra, seed=2, best_test_acc=0.9, final_test_acc=0.8)
    out = report.write_report([root], tmp_path / "out", console=Console(file=io.StringIO()))
    s = summaries(root)
    base = {m: [s["baseline", k][m] for k in (0, 1, 2)] for m in ("best_test_acc", "final_test_acc")}
    groups = {r["pattern.name"]: r for r in rows(out.parent / "groups.csv")}
    assert groups["baseline"]["n"] == "3" and groups["baseline"]["seeds"] == "0 1 2"
    for stat, value in expected(base["best_test_acc"]).items():
        assert num(groups["baseline"][f"best_test_acc_{stat}"]) == pytest.approx(value, rel=1e-9)
    for r in rows(out.parent / "comparisons.csv"):
        a = [s["p3_controlled", k][r["metric"]] for k in SEEDS]
        want = stats.ttest_ind(a, base[r["metric"]], equal_var=False)
        ci = want.confidence_interval(0.95)
        assert r["test"] == "Welch" and (r["n"], r["n_ref"]) == ("2", "3")
        assert num(r["diff"]) == pytest.approx(np.mean(a) - np.mean(base[r["metric"]]), abs=1e-12)
        assert (num(r["ci95_low"]), num(r["ci95_high"])) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert num(r["p"]) == pytest.approx(want.pvalue, rel=1e-9)


def test_broken_failed_and_unfinished_runs_are_listed_not_averaged(sweep, tmp_path):
    root = copy_sweep(sweep, tmp_path)
    before = summaries(root)
    src = jobs(root)
    # Each would move a group's mean if it were averaged in: other seeds, far-off accuracies.
    failed = shutil.copytree(src["baseline", 0], root / "failed_job")
    edit_summary(failed, status="failed", error="RuntimeError: boom\ntraceback line", seed=5, best_test_acc=0.99)
    diverged = shutil.copytree(src["p3_controlled", 0], root / "diverged_job")
    edit_summary(diverged, status="diverged", error="non-finite training loss at step 3", seed=6)
    running = shutil.copytree(src["baseline", 1], root / "killed_job")
    edit_summary(running, status="running", epochs_completed=1, seed=7, best_test_acc=0.01)
    corrupt = shutil.copytree(src["p3_controlled", 1], root / "corrupt_job")
    (corrupt / "summary.json").write_text('{"status": "completed", "best_te')
    no_events = shutil.copytree(src["p3_controlled", 1], root / "no_events_job")
    edit_summary(no_events, seed=8, best_test_acc=0.99)
    for f in no_events.glob("events.out.tfevents.*"):
        f.unlink()
    (root / "hollow_job" / ".hydra").mkdir(parents=True)

    terminal = io.StringIO()
    md = report.write_report([root], tmp_path / "out", console=Console(file=terminal, width=250)).read_text()

    groups = {r["pattern.name"]: r for r in rows(tmp_path / "out" / "groups.csv")}
    for pattern in PATTERNS:
        assert groups[pattern]["n"] == "2" and groups[pattern]["seeds"] == "0 1"
        assert num(groups[pattern]["best_test_acc_mean"]) == pytest.approx(
            np.mean([before[pattern, k]["best_test_acc"] for k in SEEDS]), abs=1e-12)
    status = {r["path"].rsplit("/", 1)[-1]: (r["status"], r["error"]) for r in rows(tmp_path / "out" / "runs.csv")}
    assert status["failed_job"] == ("failed", "RuntimeError: boom")
    assert status["diverged_job"] == ("diverged", "non-finite training loss at step 3")
    assert status["killed_job"] == ("running", "stopped after 1/2 epochs")
    assert status["corrupt_job"][0] == "unreadable" and "summary.json" in status["corrupt_job"][1]
    assert status["no_events_job"] == ("unreadable", "no TensorBoard events with acc/test")
    assert status["hollow_job"][0] == "missing"
    assert sum(s == "completed" for s, _ in status.values()) == 4
    not_averaged = md.split("## Runs not averaged")[1].split("## Plots")[0]
    for name, (state, error) in status.items():
        if state != "completed":
            assert name in not_averaged and state in not_averaged and error in not_averaged, name
    assert "10 runs found, 4 completed" in md
    assert "Runs not averaged" in terminal.getvalue() and "corrupt_job" in terminal.getvalue()


def test_one_run_gives_nan_spread_and_writes_beside_it(sweep, tmp_path):
    run_dir = shutil.copytree(jobs(sweep)["p3_controlled", 0], tmp_path / "one")
    md = report.write_report([run_dir], console=Console(file=io.StringIO())).read_text()  # out: the first path
    (row,) = rows(run_dir / "groups.csv")
    assert (row["group"], row["n"]) == ("all runs", "1")
    assert num(row["best_test_acc_mean"]) == json.loads((run_dir / "summary.json").read_text())["best_test_acc"]
    assert row["best_test_acc_std"] == row["best_test_acc_ci95_low"] == row["best_test_acc_ci95_high"] == ""
    assert rows(run_dir / "comparisons.csv") == [] and "## Groups" in md


def test_each_run_once_across_overlapping_paths(sweep, tmp_path):
    one = jobs(sweep)["baseline", 0]
    report.write_report([sweep, one, sweep.parent / sweep.name], tmp_path, console=Console(file=io.StringIO()))
    assert len(rows(tmp_path / "runs.csv")) == 4


def test_lam_init_sweep_groups_by_lam_init_and_plots_it(sweep, tmp_path):
    root = copy_sweep(sweep, tmp_path)
    for seed in SEEDS:
        run = shutil.copytree(jobs(root)["p3_controlled", seed], root / f"lam05_seed{seed}")
        edit_config(run, "lam_init: 0.1", "lam_init: 0.5")
        edit_summary(run, lam_init=0.5)
    out = report.write_report([root], tmp_path / "out", console=Console(file=io.StringIO())).parent
    keys = [(r["pattern.name"], r["pattern.lam_init"], r["n"]) for r in rows(out / "groups.csv")]
    assert keys == [("baseline", "0.1", "2"), ("p3_controlled", "0.1", "2"), ("p3_controlled", "0.5", "2")]
    assert len(rows(out / "comparisons.csv")) == 4  # both p3_controlled groups against the one baseline
    img = mpimg.imread(out / "acc_vs_lam_init.png")
    assert img.shape[0] >= 300 and img.shape[1] >= 400 and img[..., :3].std() > 0.01
    assert "](acc_vs_lam_init.png)" in (out / "report.md").read_text()


def test_statistics_against_scipy():
    d = report.describe([0.5, 0.7, 0.65, None])  # None: a metric a run doesn't have
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean([0.5, 0.7, 0.65]), scale=stats.sem([0.5, 0.7, 0.65]))
    assert d["n"] == 3 and (d["ci95_low"], d["ci95_high"]) == pytest.approx((lo, hi), rel=1e-12)
    one = report.describe([0.4])
    assert one["mean"] == 0.4 and all(math.isnan(one[k]) for k in ("std", "ci95_low", "ci95_high"))

    a, b = {0: 0.6, 1: 0.7, 2: 0.62}, {0: 0.5, 1: 0.64, 2: 0.6}
    got, want = report.compare(a, b), stats.ttest_rel(list(a.values()), list(b.values()))
    assert got["test"] == "paired" and got["p"] == pytest.approx(want.pvalue, rel=1e-9)
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx(tuple(want.confidence_interval()), rel=1e-9)
    b = {3: 0.5, 4: 0.64, 5: 0.6, 6: 0.55}
    got, want = report.compare(a, b), stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert got["test"] == "Welch" and got["p"] == pytest.approx(want.pvalue, rel=1e-9)
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx(tuple(want.confidence_interval()), rel=1e-9)
    single = report.compare({0: 0.6}, {0: 0.5})
    assert single["diff"] == pytest.approx(0.1) and math.isnan(single["ci95_low"]) and math.isnan(single["p"])

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
    proc = run_train(
        "-m",
        f"pattern={','.join(PATTERNS)}",
        f"seed={','.join(map(str, SEEDS))}",
        *TINY,
        "trainer.device=cpu",
        "trainer.num_threads=1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path_factory.mktemp("cwd"),
    )
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


def expected(values, lowest: float = -math.inf, highest: float = math.inf) -> dict:
    """Mean, sample sd and 95% t-interval cut to [lowest, highest] (what the quantity can be), computed here
    with numpy/scipy, not with the report's code."""
    x = np.array(values, dtype=float)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return {"mean": x.mean(), "std": x.std(ddof=1), "ci95_low": max(lo, lowest), "ci95_high": min(hi, highest)}


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
        metrics = {
            m: [s[pattern, seed][m] for seed in SEEDS] for m in ("best_test_acc", "final_test_acc", "wall_time_s")
        }
        if pattern == "p3_controlled":
            for block in ("block1", "block2"):
                metrics[f"final_lambda_{block}"] = [s[pattern, seed]["final_lambda"][block] for seed in SEEDS]
        else:
            assert row["final_lambda_block1_mean"] == row["final_lambda_block1_std"] == ""
        for metric, values in metrics.items():
            # groups.csv holds the intervals the tables print: cut to what an accuracy, λ or a time can be
            # (two seeds' t-interval reaches below 0)
            bounds = (0, math.inf) if metric == "wall_time_s" else (0, 1)
            for stat, value in expected(values, *bounds).items():
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
        ("pattern=p3_controlled", "pattern=baseline", "final_test_acc"),
    ]
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
            assert num(r["p_value"]) == pytest.approx(want.pvalue, rel=1e-9)
    assert "p3_controlled" in terminal and "Comparisons" in terminal and "verdict" in terminal


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
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "report.py"),
            str(sweep),
            "--reference",
            "pattern=p3_controlled",
            "--out",
            str(tmp_path / "a"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Groups" in proc.stdout
    s = summaries(sweep)
    comp = rows(tmp_path / "a" / "comparisons.csv")
    assert {(r["group"], r["reference"]) for r in comp} == {("pattern=baseline", "pattern=p3_controlled")}
    best = next(r for r in comp if r["metric"] == "best_test_acc")
    assert num(best["diff"]) == pytest.approx(
        np.mean([s["baseline", k]["best_test_acc"] - s["p3_controlled", k]["best_test_acc"] for k in SEEDS]), abs=1e-12
    )


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


def test_out_onto_a_file_is_one_line_before_anything_is_read(tmp_path, capsys):
    """Issue 27: `--out` onto a file was a FileExistsError traceback."""
    spec = importlib.util.spec_from_file_location("report_cli", ROOT / "scripts" / "report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    run = fake_run(tmp_path / "runs" / "p1_0", "p1")
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out in (taken, taken / "report"):
        assert cli.main([str(run.parent), "--out", str(out)]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line == f"error: --out {out}: {taken} is a file, not a folder; give a folder"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before and taken.read_text() == "mine"


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
    for stat, value in expected(base["best_test_acc"], 0, 1).items():
        assert num(groups["baseline"][f"best_test_acc_{stat}"]) == pytest.approx(value, rel=1e-9)
    for r in rows(out.parent / "comparisons.csv"):
        a = [s["p3_controlled", k][r["metric"]] for k in SEEDS]
        want = stats.ttest_ind(a, base[r["metric"]], equal_var=False)
        ci = want.confidence_interval(0.95)
        assert r["test"] == "Welch" and (r["n"], r["n_ref"]) == ("2", "3")
        assert num(r["diff"]) == pytest.approx(np.mean(a) - np.mean(base[r["metric"]]), abs=1e-12)
        assert (num(r["ci95_low"]), num(r["ci95_high"])) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert num(r["p_value"]) == pytest.approx(want.pvalue, rel=1e-9)


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
            np.mean([before[pattern, k]["best_test_acc"] for k in SEEDS]), abs=1e-12
        )
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
    assert "10 runs found: 4 completed and averaged over seeds, 1 diverged" in md
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
        edit_summary(run, lam_init=0.5, final_lambda={"block1": 0.40 + 0.01 * seed, "block2": 0.3})
    out = report.write_report([root], tmp_path / "out", console=Console(file=io.StringIO())).parent
    keys = [(r["pattern.name"], r["pattern.lam_init"], r["n"]) for r in rows(out / "groups.csv")]
    assert keys == [("baseline", "0.1", "2"), ("p3_controlled", "0.1", "2"), ("p3_controlled", "0.5", "2")]
    assert len(rows(out / "comparisons.csv")) == 4  # both p3_controlled groups against the one baseline
    img = mpimg.imread(out / "acc_vs_lam_init.png")
    assert img.shape[0] >= 300 and img.shape[1] >= 400 and img[..., :3].std() > 0.01
    md = (out / "report.md").read_text()
    assert "](acc_vs_lam_init.png)" in md
    # does λ end in the same place whatever its start: the widest gap of final λ means, over blocks
    s = summaries(sweep)  # the lam_init 0.1 runs, untouched
    start = {b: np.mean([s["p3_controlled", k]["final_lambda"][b] for k in SEEDS]) for b in ("block1", "block2")}
    gaps = {"block1": 0.405 - start["block1"], "block2": 0.3 - start["block2"]}
    widest = max(gaps, key=gaps.get)
    assert (
        f"pattern=p3_controlled: started 0.4 apart (lam_init 0.1 to 0.5), λ ends at most {gaps[widest]:.3g} "
        f"apart ({widest}, means over seeds)"
    ) in md.split("## Groups")[0]


# ---------------------------------------------------------------- made-up runs, read by the real reading code
# summary.json, .hydra/config.yaml and TensorBoard events written here with chosen numbers, so the
# statistics, verdicts and tables can be checked against values computed independently in the test.


def fake_run(path, pattern="baseline", seed=0, final=0.6, status="completed", summary=None, lam=None, config=None):
    """A run folder as train writes it; config: {dotted key: value} set on a minimal config."""
    from omegaconf import OmegaConf
    from torch.utils.tensorboard import SummaryWriter

    controlled = pattern.endswith("controlled")
    cfg = OmegaConf.create(
        {
            "pattern": {
                "name": pattern,
                "placement": "none" if pattern == "baseline" else "pre",
                "controlled": controlled,
                "lam_init": 0.1,
                "lam_learnable": True,
            },
            "attention": {"name": "cbam"},
            "model": {"name": "simplecnn", "width": 0.25},
            "optim": {"lr": 0.1},
            "seed": seed,
        }
    )
    for key, value in (config or {}).items():
        OmegaConf.update(cfg, key, value)
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    lam = lam if lam is not None else ({"block1": 0.1 + 0.01 * seed, "block2": 0.2} if controlled else {})
    (path / "summary.json").write_text(
        json.dumps(
            {
                "status": status,
                "seed": seed,
                "pattern": pattern,
                "controlled": controlled,
                "lam_init": cfg.pattern.lam_init,
                "lam_learnable": cfg.pattern.lam_learnable,
                "best_test_acc": final + 0.01,
                "final_test_acc": final,
                "wall_time_s": 1.0,
                "final_lambda": lam,
                "epochs": 2,
                "epochs_completed": 2,
                **(summary or {}),
            }
        )
    )
    if status == "completed":
        with SummaryWriter(str(path)) as writer:
            for epoch, acc in enumerate((final - 0.1, final)):
                writer.add_scalar("acc/test", acc, epoch + 1)
            for block, value in lam.items():
                for step, v in ((0, cfg.pattern.lam_init), (4, value)):
                    writer.add_scalar(f"lambda/{block}", v, step)
    return path


BASE = [0.60, 0.62, 0.61, 0.63]
SHIFTS = {
    "p1": [0.020, 0.022, 0.019, 0.021],
    "p2": [-0.030, -0.028, -0.031, -0.029],
    "p3": [0.010, -0.012, 0.003, -0.002],
}


def holm_by_hand(p: list[float]) -> list[float]:
    order = sorted(range(len(p)), key=p.__getitem__)
    steps = [min(1.0, (len(p) - rank) * p[i]) for rank, i in enumerate(order)]
    return [max(steps[: order.index(i) + 1]) for i in range(len(p))]


def power_by_hand(delta: float, se: float, df: float, alpha: float = 0.05) -> float:
    crit = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(crit, df, delta / se) + stats.nct.cdf(-crit, df, delta / se)


@pytest.fixture(scope="module")
def verdict_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdicts")
    for seed, base in enumerate(BASE):
        fake_run(root / f"baseline_{seed}", "baseline", seed, base)
        for pattern, shift in SHIFTS.items():
            fake_run(root / f"{pattern}_{seed}", pattern, seed, base + shift[seed])
    out = report.write_report([root], console=Console(file=io.StringIO()))
    return root, rows(root / "comparisons.csv"), out.read_text()


def test_verdicts_holm_and_power_from_the_numbers(verdict_report):
    _, comp, md = verdict_report
    final = [r for r in comp if r["metric"] == "final_test_acc"]
    assert [r["group"] for r in final] == ["pattern=p1", "pattern=p2", "pattern=p3"]
    p_values = [stats.ttest_rel(np.add(BASE, SHIFTS[p]), BASE).pvalue for p in SHIFTS]
    for r, pattern, p, p_holm in zip(final, SHIFTS, p_values, holm_by_hand(p_values)):
        d = np.array(SHIFTS[pattern])
        assert r["test"] == "paired" and num(r["diff"]) == pytest.approx(d.mean(), abs=1e-12)
        assert num(r["p_value"]) == pytest.approx(p, rel=1e-6) and num(r["p_holm"]) == pytest.approx(p_holm, rel=1e-6)
        # Issue 27: power at the level a verdict among these 3 tests needs (Holm's first step, 0.05 / 3), and at
        # 0.05 alone, named; the seeds needed at that level too
        assert num(r["alpha_power"]) == pytest.approx(0.05 / 3, rel=1e-12)
        mde, mde_alone = num(r["mde_pts"]) / 100, num(r["mde_pts_alpha_0.05"]) / 100
        assert power_by_hand(mde, d.std(ddof=1) / 2, 3, 0.05 / 3) == pytest.approx(0.8, abs=1e-6)
        assert power_by_hand(mde_alone, d.std(ddof=1) / 2, 3) == pytest.approx(0.8, abs=1e-6)
        need = int(r["seeds_for_0.5pts"])
        se = lambda n: d.std(ddof=1) / math.sqrt(n)  # noqa: E731, B023  (called in this iteration)
        assert (
            power_by_hand(0.005, se(need), need - 1, 0.05 / 3)
            >= 0.8
            > power_by_hand(0.005, se(need - 1), need - 2, 0.05 / 3)
        )
    assert [r["verdict"] for r in final] == ["better", "worse", "no difference detected"]
    # report.md opens with the answer, in sentences made from these numbers, before the tables
    answer_part = md.split("## Groups")[0]
    p1 = final[0]
    diff, low, high = (num(p1[k]) * 100 for k in ("diff", "ci95_low", "ci95_high"))
    sentence = (
        f"pattern=p1 vs pattern=baseline: {diff:+.2f} points [{low:+.2f}, {high:+.2f}], "
        f"better (Holm p = {num(p1['p_holm']):.2g}"
    )
    assert sentence in answer_part
    assert "pattern=p2 vs pattern=baseline" in answer_part and ", worse (Holm p" in answer_part
    p3 = final[2]
    assert (
        f"4 seed pairs detect {num(p3['mde_pts']):.2f} points with 80% power at alpha 0.0167 (0.05 / 3: "
        f"Holm's first step over 3 comparisons; at alpha 0.05 alone, as if this were the only comparison: "
        f"{num(p3['mde_pts_alpha_0.05']):.2f} points)"
    ) in answer_part
    assert f"0.5 points would need {p3['seeds_for_0.5pts']} seeds per group at alpha 0.0167" in answer_part
    # the intervals beside Holm's verdicts are each comparison's own: said so
    assert "95% CI (unadjusted: each comparison alone), verdict at Holm-adjusted p" in answer_part


def test_a_p_value_reads_the_same_in_the_answer_and_the_table(verdict_report):
    """Issue 39: one Holm p printed as 0.205 in the answer and 0.21 in the comparisons table."""
    _, comp, md = verdict_report
    answer_part, table = md.split("## Groups")[0], md.split("## Comparisons")[1].split("\n## ")[0]
    header = [c.strip() for c in next(line for line in table.splitlines() if line.startswith("| group |")).split("|")]
    for r in (r for r in comp if r["metric"] == "final_test_acc"):
        (sentence,) = [
            line for line in answer_part.splitlines() if line.startswith(f"- {r['group']} vs ") and "Holm p = " in line
        ]
        said = sentence.split("Holm p = ")[1].split(",")[0]
        (row,) = [
            line
            for line in table.splitlines()
            if line.startswith(f"| {r['group']} | {r['reference']} | final_test_acc |")
        ]
        assert [c.strip() for c in row.split("|")][header.index("p Holm")] == said
        assert float(said) == pytest.approx(num(r["p_holm"]), rel=0.05)  # two significant digits


def test_p_values_keep_two_digits_unless_that_crosses_the_verdicts_level():
    from resattn.report.tables import p_text

    assert [p_text(p) for p in (0.2051, 6.9e-05, 0.0504, 0.0496, 0.04996)] == [
        "0.21",
        "6.9e-05",
        "0.05",
        "0.0496",
        "0.04996",
    ]


def test_one_seed_or_one_group_gives_no_verdict(verdict_report, tmp_path):
    root, _, _ = verdict_report
    one_seed = tmp_path / "one_seed"
    for name in ("baseline_0", "p1_0"):
        shutil.copytree(root / name, one_seed / name)
    md = report.write_report([one_seed], tmp_path / "a", console=Console(file=io.StringIO())).read_text()
    (r, *_) = [r for r in rows(tmp_path / "a" / "comparisons.csv") if r["metric"] == "final_test_acc"]
    assert r["verdict"] == "not testable" and r["p_value"] == r["p_holm"] == r["mde_pts"] == ""
    assert "n = 1 / 1: one seed on a side, no verdict possible" in md.split("## Groups")[0]
    md = report.write_report(
        [root / "p1_0", root / "p1_1"], tmp_path / "b", console=Console(file=io.StringIO())
    ).read_text()
    assert "Only one group of completed runs (all runs): nothing to compare, so no verdict." in md
    no_baseline = tmp_path / "no_baseline"
    for name in ("p1_0", "p1_1", "p3_0", "p3_1"):
        shutil.copytree(root / name, no_baseline / name)
    md = report.write_report([no_baseline], console=Console(file=io.StringIO())).read_text()
    assert "no pattern=baseline group, so no reference" in md.split("## Groups")[0]
    assert rows(no_baseline / "comparisons.csv") == []


def test_two_seeds_give_an_interval_not_a_verdict_and_intervals_stay_possible(tmp_path):
    """Issue 18: "worse (Holm p = 0.0335, n = 2 / 2)" from two seeds; wall-time CIs below 0 s; accuracy
    differences beyond ±100 points."""
    root = tmp_path / "two_seeds"
    finals = {"baseline": [0.50, 0.50], "p1": [0.60, 0.601], "p3": [0.95, 0.05]}
    for pattern, values in finals.items():
        for seed, final in enumerate(values):
            fake_run(root / f"{pattern}_{seed}", pattern, seed, final, summary={"wall_time_s": [1.0, 300.0][seed]})
    md = report.write_report([root], tmp_path / "out", console=Console(file=io.StringIO())).read_text()
    comp = [r for r in rows(tmp_path / "out" / "comparisons.csv") if r["metric"] == "final_test_acc"]
    p1, p3 = comp
    assert num(p1["p_holm"]) < 0.05  # what used to be a verdict
    assert {p1["verdict"], p3["verdict"]} == {"too few seeds for a verdict"}
    answer_part = md.split("## Groups")[0]
    assert "better (" not in answer_part and "worse (" not in answer_part
    assert "too few seeds for a verdict (n = 2 / 2; a verdict needs 3 seeds a side)" in answer_part
    assert -1 <= num(p3["ci95_low"]) and num(p3["ci95_high"]) <= 1  # the t-interval reaches about ±440 points
    assert "points [-100.00, +100.00], too few seeds" in answer_part
    header, *body = [
        line
        for line in md.splitlines()
        if "wall time s (mean ± sd)" in line or line.startswith(("| baseline |", "| p1 |", "| p3 |"))
    ]
    assert len(body) == 3
    column = [c.strip() for c in header.split("|")].index("wall time s (mean ± sd)") + 1
    for line in body:
        low = [c.strip() for c in line.split("|")][column].strip("[]").split(",")[0]
        assert float(low) >= 0, line


def test_terminal_tables_fit_80_columns_without_breaking_names(tmp_path):
    root = tmp_path / "grid"
    for attention in ("cbam", "se"):
        for pattern in ("baseline", "p3_controlled"):
            for seed, base in enumerate(BASE[:3]):
                fake_run(
                    root / f"{attention}_{pattern}_{seed}",
                    pattern,
                    seed,
                    base + (pattern != "baseline") * 0.01,
                    config={"attention.name": attention},
                )
    terminal = io.StringIO()
    report.write_report([root], tmp_path / "out", console=Console(file=terminal, width=80))
    text = terminal.getvalue()
    assert max(map(len, text.splitlines())) <= 80
    # each comparison row names its group whole: "pattern=p3_controlled" on one line, never "pattern=p3_cont" + "rolled"
    comparisons = text.split("Comparisons")[1].split("λ per block")[0]
    assert comparisons.count("pattern=p3_controlled") == 4
    assert "attention=cbam" in text and "attentio" not in text.replace("attention", "")
    assert "testable" in comparisons  # the verdict column is shown, its words whole


def test_diverged_runs_are_counted_per_group_never_averaged(tmp_path):
    root = tmp_path / "lr_stress"
    for lr in (0.1, 1.6):
        for pattern in ("baseline", "p1"):
            for seed in (0, 1, 2):
                diverges = lr == 1.6 and (pattern == "baseline" or seed == 2)
                fake_run(
                    root / f"{pattern}_{lr}_{seed}",
                    pattern,
                    seed,
                    0.5 + 0.01 * seed + (pattern == "p1") * 0.02,
                    status="diverged" if diverges else "completed",
                    config={"optim.lr": lr},
                    summary={"error": "non-finite training loss at step 3", "final_test_acc": 0.1}
                    if diverges
                    else None,
                )
    md = report.write_report([root], console=Console(file=io.StringIO())).read_text()
    groups = {(r["optim.lr"], r["pattern.name"]): r for r in rows(root / "groups.csv")}
    assert {k: (g["n"], g["diverged"], g["diverged_seeds"]) for k, g in groups.items()} == {
        ("0.1", "baseline"): ("3", "0", ""),
        ("0.1", "p1"): ("3", "0", ""),
        ("1.6", "baseline"): ("0", "3", "0 1 2"),
        ("1.6", "p1"): ("2", "1", "2"),
    }
    # the diverged run's 0.1 is not in p1's mean at lr 1.6; an all-diverged group has no mean at all
    assert num(groups["1.6", "p1"]["final_test_acc_mean"]) == pytest.approx(np.mean([0.52, 0.53]), abs=1e-12)
    assert groups["1.6", "baseline"]["final_test_acc_mean"] == ""
    comp = {(r["group"], r["metric"]): r for r in rows(root / "comparisons.csv")}
    assert {g for g, _ in comp} == {"pattern=p1, optim.lr=0.1"}  # the lr-1.6 reference has nothing to compare
    answer_part = md.split("## Groups")[0]
    assert "pattern=baseline, optim.lr=1.6: 3 of 3 runs diverged (seed 0 1 2)" in answer_part
    assert "pattern=p1, optim.lr=1.6: 1 of 3 runs diverged (seed 2)" in answer_part
    assert "every run of its reference pattern=baseline, optim.lr=1.6 diverged" in answer_part
    assert "| p1 | 1.6 | 2 | 0 1 | 1 (seed 2) |" in md


def test_a_side_that_lost_seeds_to_divergence_says_how_many_and_that_the_rest_were_compared(tmp_path):
    """Issue 27: an arm that loses seeds to divergence is compared on its survivors, which flatters it."""
    for seed in range(4):
        fake_run(tmp_path / f"baseline_{seed}", "baseline", seed, 0.60 + 0.01 * seed)
        fake_run(
            tmp_path / f"p1_{seed}",
            "p1",
            seed,
            0.62 + 0.01 * seed,
            status="diverged" if seed == 3 else "completed",
            summary={"error": "non-finite training loss at step 3"} if seed == 3 else None,
        )
    md = report.write_report([tmp_path], console=Console(file=io.StringIO())).read_text()
    final = next(r for r in rows(tmp_path / "comparisons.csv") if r["metric"] == "final_test_acc")
    assert (final["test"], final["n"], final["n_ref"], final["diverged"], final["diverged_ref"]) == (
        "Welch",
        "3",
        "4",
        "1",
        "0",
    )
    sentence = next(
        line
        for line in md.split("## Groups")[0].splitlines()
        if line.startswith("- pattern=p1 vs pattern=baseline: +") and "Holm p" in line
    )
    assert sentence.endswith(
        "; 1 of 4 seeds of pattern=p1 diverged, the other 3 are compared (survivors only: "
        "diverged runs are counted, never averaged)"
    ), sentence


def test_labels_name_every_key_two_groups_differ_in(tmp_path):
    """Issue 27: a sweep that changed optim.lr and trainer.epochs together was labelled by lr alone."""
    for lr, epochs in ((0.1, 2), (0.4, 4)):
        for pattern in ("baseline", "p3_controlled"):
            for seed in range(3):
                fake_run(
                    tmp_path / f"{pattern}_{lr}_{seed}",
                    pattern,
                    seed,
                    0.6 + 0.01 * seed,
                    config={"optim.lr": lr, "trainer.epochs": epochs},
                )
    report.write_report([tmp_path], console=Console(file=io.StringIO()))
    groups = rows(tmp_path / "groups.csv")
    # pattern.placement and pattern.controlled follow from the pattern's own choice: part of what it names
    assert list(groups[0])[:4] == ["pattern.name", "optim.lr", "trainer.epochs", "group"]
    assert [g["group"] for g in groups] == [
        f"pattern={p}, optim.lr={lr}, trainer.epochs={e}"
        for p in ("baseline", "p3_controlled")
        for lr, e in ((0.1, 2), (0.4, 4))
    ]


def test_runs_that_differ_only_in_data_cache_dir_are_pooled(tmp_path):
    """data.cache_dir says where the decoded images are kept (identity.NOT_THE_EXPERIMENT), not what was run."""
    for seed in range(2):
        for pattern in ("baseline", "p1"):
            fake_run(
                tmp_path / f"{pattern}_{seed}",
                pattern,
                seed,
                0.6 + 0.01 * seed,
                config={"data.cache_dir": f"/cache/{seed}"},
            )
    report.write_report([tmp_path], console=Console(file=io.StringIO()))
    assert [(g["group"], g["n"]) for g in rows(tmp_path / "groups.csv")] == [
        ("pattern=baseline", "2"),
        ("pattern=p1", "2"),
    ]


def test_sources_are_the_folders_given_by_their_full_paths(tmp_path, monkeypatch):
    """Issue 39: "Sources: `.`" for a report written into the folder it was given."""
    for name in ("study", "export"):
        fake_run(tmp_path / name / "baseline_0")
    study, export = (tmp_path / name for name in ("study", "export"))
    monkeypatch.chdir(study)
    md = report.write_report(["."], console=Console(file=io.StringIO())).read_text()
    assert f"Sources: `{study.resolve()}`\n" in md
    monkeypatch.chdir(tmp_path)
    md = report.write_report(["study", "export"], "out", console=Console(file=io.StringIO())).read_text()
    assert f"Sources: `{study.resolve()}`, `{export.resolve()}`\n" in md


def test_best_equal_to_final_in_every_run_is_shown_once_and_said(tmp_path):
    """Issue 39: best and final accuracy tables identical when accuracy rose every epoch."""
    for seed, base in enumerate(BASE[:3]):
        for pattern, shift in (("baseline", 0.0), ("p1", 0.02)):
            fake_run(
                tmp_path / "runs" / f"{pattern}_{seed}",
                pattern,
                seed,
                base + shift,
                summary={"best_test_acc": base + shift},
            )
    terminal = io.StringIO()
    md = report.write_report(
        [tmp_path / "runs"], tmp_path / "out", console=Console(file=terminal, width=200)
    ).read_text()
    said = "Best test accuracy equals final test accuracy in every run"
    assert "best test acc" not in md and "best_test_acc" not in md and md.count(said) == 1
    assert "best test" not in terminal.getvalue() and said in terminal.getvalue()
    assert {r["metric"] for r in rows(tmp_path / "out" / "comparisons.csv")} == {"best_test_acc", "final_test_acc"}
    assert "best_test_acc_mean" in rows(tmp_path / "out" / "groups.csv")[0]
    # one run that peaked before its last epoch: best is its own figure again
    edit_summary(tmp_path / "runs" / "p1_0", best_test_acc=BASE[0] + 0.03)
    md = report.write_report([tmp_path / "runs"], tmp_path / "out", console=Console(file=io.StringIO())).read_text()
    assert "best test acc % (mean ± sd)" in md and "| best_test_acc |" in md and said not in md


def test_each_groups_time_per_run_stands_beside_its_accuracy(tmp_path):
    """Issue 39: p3 took 57% longer than the baseline, and the report did not show it. A fused job's
    wall_time_s is the whole job's: each member counts its share."""
    seconds = {"baseline": [100.0, 110.0, 120.0], "p1": [150.0, 175.0, 190.0], "p3": [95.0, 90.0, 100.0]}
    for pattern, times in seconds.items():
        for seed, (base, t) in enumerate(zip(BASE, times)):
            members = 2 if pattern == "p3" else 1  # fused in pairs: twice the time on the clock, shared
            fake_run(
                tmp_path / f"{pattern}_{seed}",
                pattern,
                seed,
                base,
                summary={"wall_time_s": t * members, "members": members},
            )
    md = report.write_report([tmp_path], console=Console(file=io.StringIO())).read_text()
    table = md.split("## Groups")[1].split("\n## ")[0]
    header = [c.strip() for c in next(line for line in table.splitlines() if line.startswith("| pattern |")).split("|")]
    column = header.index("time vs reference")
    cells = {
        c[1].strip(): c[column].strip()
        for c in (
            line.split("|") for line in table.splitlines() if line.startswith(("| baseline |", "| p1 |", "| p3 |"))
        )
    }
    ref = np.mean(seconds["baseline"])
    for pattern in ("p1", "p3"):
        change = f"{np.mean(seconds[pattern]) / ref - 1:+.0%}"
        assert cells[pattern] == change
        assert (
            f"- pattern={pattern}: {np.mean(seconds[pattern]):.1f} s against {ref:.1f} s for pattern=baseline, {change}"
        ) in md.split("## Groups")[0]
    assert cells["baseline"] == "reference" and cells["p1"] == "+56%"  # 171.7 s against 110 s


def test_header_over_an_export_and_its_original_says_how_many_were_kept(tmp_path):
    """Issue 27: "8 runs found, 8 completed and averaged" when each seed was there twice and 4 were kept."""
    for seed in range(2):
        for pattern in ("baseline", "p1"):
            fake_run(tmp_path / "study" / f"{pattern}_{seed}", pattern, seed, 0.6 + 0.01 * seed)
    shutil.copytree(tmp_path / "study", tmp_path / "export")
    md = report.write_report(
        [tmp_path / "study", tmp_path / "export"], tmp_path / "out", console=Console(file=io.StringIO())
    ).read_text()
    assert (
        "8 runs found: 4 completed and averaged over seeds, 0 diverged (counted per group), 4 left out as the "
        "same seed found again (counted once; notes below), 0 others not averaged."
    ) in md
    assert sum(r["n"] == "2" for r in rows(tmp_path / "out" / "groups.csv")) == 2


def test_accuracy_vs_lam_init_is_in_percent_with_possible_intervals(tmp_path):
    """Issue 27: the plot drew a fraction's interval from -1.7 to 2.9; the tables use %."""
    from resattn.report import plots
    from resattn.report.runs import group_runs, grouping_keys, read_run

    for lam_init in (0.1, 0.5):
        for seed, final in enumerate((0.05, 0.95)):  # two far-apart seeds: the t-interval spans about ±5
            fake_run(
                tmp_path / f"lam{lam_init}_{seed}", "p3_controlled", seed, final, config={"pattern.lam_init": lam_init}
            )
    runs = [read_run(d) for d in sorted(tmp_path.iterdir())]
    keys = grouping_keys(runs)
    ax = plots.accuracy_vs_lam_init(group_runs(runs, keys), keys).axes[0]
    (container,) = ax.containers
    data_line, _, (bars,) = container
    assert list(data_line.get_ydata()) == pytest.approx([50.0, 50.0])
    assert [tuple(seg[:, 1]) for seg in bars.get_segments()] == [(0.0, 100.0), (0.0, 100.0)]
    assert "%" in ax.get_ylabel()


RESNET32_BLOCKS = [f"stage{s}.block{b}" for s in (1, 2, 3) for b in range(5)]
CORRUPTIONS = {"gaussian_noise": 0.50, "shot_noise": 0.54, "gaussian_blur": 0.58, "contrast": 0.46}


def corruption_acc(offset: float) -> dict:
    """{name: {severity: acc}} as summary.json holds it (JSON keys are text), falling with severity."""
    return {name: {str(s): base + offset - 0.02 * s for s in range(1, 6)} for name, base in CORRUPTIONS.items()}


@pytest.fixture(scope="module")
def resnet_groups(tmp_path_factory):
    """baseline and p3_controlled ResNet-32 runs with λ for 15 blocks and corruption accuracies, 3 seeds each."""
    from resattn.report.runs import group_runs, grouping_keys, read_run

    root = tmp_path_factory.mktemp("resnet")
    for pattern in ("baseline", "p3_controlled"):
        for seed in (0, 1, 2):
            offset = 0.01 * seed + (0.03 + 0.002 * seed**2 if pattern == "p3_controlled" else 0.0)
            acc = corruption_acc(offset)
            lam = (
                {b: 0.1 + 0.001 * i + 0.01 * seed for i, b in enumerate(RESNET32_BLOCKS)}
                if pattern == "p3_controlled"
                else {}
            )
            fake_run(
                root / f"{pattern}_{seed}",
                pattern,
                seed,
                0.7 + offset,
                lam=lam,
                config={"model.name": "resnet", "model.depth": 32},
                summary={
                    "corruption_acc": acc,
                    "robust_acc": float(np.mean([v for a in acc.values() for v in a.values()])),
                    "lam_travel": {b: v - 0.1 for b, v in lam.items()},
                },
            )
    runs = [read_run(d) for d in sorted(root.iterdir())]
    keys = grouping_keys(runs)
    return root, group_runs(runs, keys), keys


def test_robust_acc_corruption_families_and_lambda_per_block(resnet_groups):
    from resattn.report import plots

    root, groups, _ = resnet_groups
    md = report.write_report([root], console=Console(file=io.StringIO())).read_text()
    p3 = {r["pattern.name"]: r for r in rows(root / "groups.csv")}["p3_controlled"]
    offsets = [0.01 * s + 0.03 + 0.002 * s**2 for s in (0, 1, 2)]
    robust = [np.mean([v for a in corruption_acc(o).values() for v in a.values()]) for o in offsets]
    assert num(p3["robust_acc_mean"]) == pytest.approx(np.mean(robust), abs=1e-12)
    assert num(p3["lam_travel_stage3.block4_mean"]) == pytest.approx(0.014 + 0.01, abs=1e-9)
    assert num(p3["final_lambda_stage2.block0_mean"]) == pytest.approx(0.105 + 0.01, abs=1e-9)
    assert {r["metric"] for r in rows(root / "comparisons.csv")} == {"best_test_acc", "final_test_acc", "robust_acc"}
    assert "**robust accuracy**" in md.split("## Groups")[0]

    # per family: mean over its corruptions and severities, then mean ± sd over seeds (noise: gaussian + shot)
    noise = [
        np.mean([0.50 + o - 0.02 * s for s in range(1, 6)] + [0.54 + o - 0.02 * s for s in range(1, 6)])
        for o in offsets
    ]
    table = md.split("## Accuracy under corruptions")[1].split("##")[0]
    assert "| group | n | noise % | blur % | digital % | all (robust acc) % |" in table
    assert f"| pattern=p3_controlled | 3 | {np.mean(noise) * 100:.2f} ± {np.std(noise, ddof=1) * 100:.2f} |" in table
    fig = plots.corruption_severity(groups)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["noise", "blur", "digital"]
    assert "](corruption_severity.png)" in md and (root / "corruption_severity.png").exists()

    # λ: 15 blocks are more than groups, so blocks run down the table, in the network's order
    lam_table = md.split("## λ per block")[1].split("##")[0]
    assert [line.split(" | ")[0].lstrip("| ") for line in lam_table.strip().splitlines()[4:]] == RESNET32_BLOCKS
    (ax,) = plots.lambdas(groups).axes  # too many blocks for a panel each: final λ against block
    assert [t.get_text() for t in ax.get_xticklabels()] == RESNET32_BLOCKS


def test_lambda_legend_names_fixed_lambda_only_when_a_run_had_one(resnet_groups, tmp_path):
    from resattn.report import plots
    from resattn.report.runs import group_runs, grouping_keys, read_run

    def legend_texts(groups) -> list[str]:
        fig = plots.lambdas(groups)
        return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]

    _, groups, _ = resnet_groups
    assert not any("fixed" in text for text in legend_texts(groups))
    lam = {"block1": 0.3, "block2": 0.3}
    for lam_init in (0.1, 0.5):  # lam_init varies: colour says lam_init, line style learnable or fixed
        fake_run(tmp_path / f"learnable_{lam_init}", "p3_controlled", lam=lam, config={"pattern.lam_init": lam_init})
    runs = [read_run(d) for d in sorted(tmp_path.iterdir())]
    assert not any("fixed" in text for text in legend_texts(group_runs(runs, grouping_keys(runs))))
    fake_run(
        tmp_path / "fixed",
        "p3_controlled",
        lam={"block1": 0.1, "block2": 0.1},
        config={"pattern.lam_learnable": False},
        summary={"lam_learnable": False},
    )
    runs = [read_run(d) for d in sorted(tmp_path.iterdir())]
    texts = legend_texts(group_runs(runs, grouping_keys(runs)))
    assert "fixed λ (lam_learnable=false)" in texts and "learnable λ" in texts


def test_grid_heatmap_compares_each_cell_with_the_baseline_of_its_attention(tmp_path):
    from resattn.report import comparisons, plots
    from resattn.report.runs import group_runs, grouping_keys, metric_names, read_run

    gain = {
        ("p1", "cbam"): 0.010,
        ("p1", "se"): 0.020,
        ("p3", "cbam"): -0.010,
        ("p3", "se"): 0.005,
        ("p1", "eca"): 0.030,
    }
    for seed, base in enumerate(BASE):
        for attention in ("cbam", "se"):  # the baseline has no attention: the same numbers under each name
            fake_run(
                tmp_path / f"baseline_{attention}_{seed}", "baseline", seed, base, config={"attention.name": attention}
            )
        for (pattern, attention), g in gain.items():
            fake_run(
                tmp_path / f"{pattern}_{attention}_{seed}",
                pattern,
                seed,
                base + g + 0.001 * seed,
                config={"attention.name": attention},
            )
    md = report.write_report([tmp_path], console=Console(file=io.StringIO())).read_text()
    comp = {r["group"]: r for r in rows(tmp_path / "comparisons.csv") if r["metric"] == "final_test_acc"}
    assert comp["pattern=p1, attention=se"]["reference"] == "pattern=baseline, attention=se"
    assert comp["pattern=p3, attention=cbam"]["reference"] == "pattern=baseline, attention=cbam"
    # no eca baseline: the cbam and se baselines fit equally well and hold the same numbers, so either serves
    assert comp["pattern=p1, attention=eca"]["reference"] == "pattern=baseline, attention=cbam"
    assert "hold the same numbers (the same computation)" in md
    assert "](grid_heatmap.png)" in md and mpimg.imread(tmp_path / "grid_heatmap.png")[..., :3].std() > 0.01

    runs = [read_run(d) for d in sorted(tmp_path.iterdir()) if d.is_dir()]
    keys = grouping_keys(runs)
    groups = group_runs(runs, keys)
    refs = comparisons.reference_groups(groups, {"pattern": "baseline"})
    found, _ = comparisons.comparisons(groups, refs, keys, metric_names(groups))
    ax = plots.heatmap(groups, refs, keys, found).axes[0]
    rows_, cols = [t.get_text() for t in ax.get_yticklabels()], [t.get_text() for t in ax.get_xticklabels()]
    assert rows_ == ["baseline", "p1", "p3"] and cols == ["cbam", "eca", "se"]  # the reference's key down the side
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    d = np.array(gain["p1", "se"]) + 0.001 * np.arange(4)
    lo, hi = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert cells[1, 2] == f"{d.mean() * 100:+.2f}\n[{lo * 100:+.2f}, {hi * 100:+.2f}]"
    assert cells[0, 0] == cells[0, 2] == "reference"
    assert cells[0, 1] == cells[2, 1] == "no runs"  # no runs of baseline or p3 with eca: an empty cell


def test_grid_heatmap_colours_only_differences_found_and_marks_empty_cells(tmp_path):
    """Issue 27: an empty cell was white like a difference of 0, and a cell with no difference detected (a wide
    interval around a large mean) could be the darkest."""
    from resattn.report import comparisons, plots
    from resattn.report.runs import group_runs, grouping_keys, metric_names, read_run

    # p1 with cbam: +1 point at every seed (a difference); p3 with cbam: -3 points on average, but from -11 to
    # +4 (none detected); p3 with se: no runs
    shifts = {
        ("p1", "cbam"): [0.010, 0.011, 0.009, 0.010],
        ("p3", "cbam"): [-0.11, 0.04, -0.02, -0.03],
        ("p1", "se"): [0.0, 0.001, -0.001, 0.0],
    }
    for seed, base in enumerate(BASE):
        for attention in ("cbam", "se"):
            fake_run(
                tmp_path / f"baseline_{attention}_{seed}", "baseline", seed, base, config={"attention.name": attention}
            )
        for (pattern, attention), shift in shifts.items():
            fake_run(
                tmp_path / f"{pattern}_{attention}_{seed}",
                pattern,
                seed,
                base + shift[seed],
                config={"attention.name": attention},
            )
    runs = [read_run(d) for d in sorted(tmp_path.iterdir())]
    keys = grouping_keys(runs)
    groups = group_runs(runs, keys)
    refs = comparisons.reference_groups(groups, {"pattern": "baseline"})
    found, _ = comparisons.comparisons(groups, refs, keys, metric_names(groups))
    verdicts = {r["group"]: r["verdict"] for r in found if r["metric"] == "final_test_acc"}
    assert verdicts["pattern=p1, attention=cbam"] == "better"
    assert verdicts["pattern=p3, attention=cbam"] == "no difference detected"
    image = plots.heatmap(groups, refs, keys, found).axes[0].images[0]
    colours = image.to_rgba(image.get_array())  # rows baseline, p1, p3; columns cbam, se
    darkness = 1 - colours[..., :3].mean(axis=-1)
    assert darkness[1, 0] > darkness[2, 0]  # the difference found is darker than the larger one not found
    assert np.array_equal(colours[2, 0], image.to_rgba(0.0))  # none detected: white, as the reference
    assert image.get_array().mask[2, 1]  # no runs: masked, drawn in the colour map's "bad" colour, not white
    assert not np.allclose(colours[2, 1], image.to_rgba(0.0))


def test_the_accuracy_curve_puts_each_point_at_its_epoch_and_shows_validation_when_there_is_a_split(tmp_path):
    """With data.val_size the test split is read once, at the last epoch: it was drawn at epoch 1."""
    import types

    from torch.utils.tensorboard import SummaryWriter

    from resattn.report import plots
    from resattn.report.runs import find_run_dirs, read_run

    for seed in (0, 1):
        run = fake_run(tmp_path / f"b{seed}", seed=seed, summary={"epochs_completed": 3, "step": 30})
        with SummaryWriter(str(run)) as writer:
            for epoch in (1, 2, 3):
                writer.add_scalar("acc/val", 0.1 * epoch + 0.01 * seed, 10 * epoch)
    runs = [read_run(d) for d in find_run_dirs([tmp_path])]
    test = plots.epoch_table(runs, "acc/test")  # fake_run logs acc/test at steps 1 and 2 of 30 steps: epoch 1
    assert test.shape == (2, 3) and np.isnan(test[:, 1:]).all()
    val = plots.epoch_table(runs, "acc/val")
    assert val[0].tolist() == pytest.approx([0.1, 0.2, 0.3])
    groups = [types.SimpleNamespace(runs=runs, label="baseline")]
    assert plots.accuracy(groups).axes[0].get_ylabel() == "validation accuracy (%)"

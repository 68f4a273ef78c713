"""A report over finished runs: group them by config, average over seeds, compare with a reference, give verdicts.

`write_report(paths, out_dir)` finds every run under the given run, sweep or parent folders, reads
summary.json, .hydra/config.yaml and the TensorBoard events, and writes report.md, runs.csv,
groups.csv, comparisons.csv and PNG plots into out_dir, printing the tables to the terminal too.

The parts: runs (finding, reading, grouping), stats (tests, Holm, power), comparisons (which
reference, and the verdicts), corruption (accuracy by corruption family), plots, tables, answer (the opening
sentences) and writer (write_report).
"""

from resattn.report.runs import ReportError
from resattn.report.writer import write_report

__all__ = ["ReportError", "write_report"]

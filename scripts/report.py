"""Report on finished runs: python scripts/report.py PATH [PATH ...] [--reference KEY=VALUE ...] [--out DIR]

PATH is a run folder, a sweep folder or any folder above them. Writes report.md (opening with a verdict
per comparison: better, worse or no difference detected, Holm-adjusted), runs.csv, groups.csv,
comparisons.csv and PNG plots into --out (default: the first PATH) and prints the tables.
"""

import argparse
import sys

from resattn.report import ReportError, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0].partition(": ")[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="run, sweep or parent folders")
    parser.add_argument(
        "--reference",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="the group to compare against, e.g. pattern=p3 or pattern.lam_init=0.1 "
        "(default: pattern=baseline); each group meets the reference group that shares "
        "its other keys (p1 with se against the baseline with se)",
    )
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: the first PATH)")
    args = parser.parse_args(argv)
    # `--reference pattern=p1 SWEEP` hands SWEEP to --reference; a reference always holds '=', a path need not.
    paths = args.paths + [r for r in args.reference if "=" not in r]
    reference = [r for r in args.reference if "=" in r]
    if not paths:
        parser.error("give at least one run, sweep or parent folder")
    try:
        write_report(paths, args.out, reference)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

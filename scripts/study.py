"""A study in pieces: python scripts/study.py status DIR | export DIR DEST | rows DIR STUDY TABLE

status: every job of the sweep DIR (from its multirun.yaml, so jobs that never started show as missing),
or the one run of a run's folder, its state and the time it still needs, from the epochs timed so far;
totals, why any job that claims to be complete is not, and the pieces it ran in at the end.
export: a copy of DIR (a sweep, or one run's folder) without the checkpoints of completed runs, small
enough to take off the machine; scripts/report.py reads it like the original. --without-images leaves
the attention maps out of its events (they are drawn over the data set's images: use it for a copy that
goes into a repository).
rows: every run under DIR (a sweep, or one run's folder) as the rows of STUDY in the CSV file TABLE
(docs/results/runs.csv), replacing that study's rows and keeping the others'.
"""

import argparse
import sys
from pathlib import Path

from rich.console import Console

from resattn.study import (
    StudyError,
    code_lines,
    export,
    pieces_lines,
    reasons,
    status_table,
    study_status,
    totals,
    write_rows,
)


def show_status(folder: Path) -> None:
    jobs = study_status(folder)
    console = Console()
    console.print(status_table(jobs, console.width))
    lines = [totals(jobs), *reasons(jobs), *pieces_lines(folder), *code_lines(folder)]
    console.print("\n".join(lines), soft_wrap=False, markup=False, highlight=False)


def show_export(source: Path, dest: Path, images: bool) -> None:
    copied, left_out = export(source, dest, images)
    print(
        f"exported {copied} files to {dest}, without the checkpoints of {left_out} completed runs"
        + ("" if images else " and without image summaries")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0].partition(": ")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="each job's (or the run's) state and the time still needed")
    status.add_argument("folder", type=Path, metavar="DIR")
    copy = commands.add_parser("export", help="copy a sweep or a run without the checkpoints of completed runs")
    copy.add_argument("folder", type=Path, metavar="DIR")
    copy.add_argument("dest", type=Path, metavar="DEST")
    copy.add_argument("--without-images", action="store_true", help="leave the attention maps out of the events")
    rows = commands.add_parser("rows", help="the study's runs as rows of the published table")
    rows.add_argument("folder", type=Path, metavar="DIR")
    rows.add_argument("study", metavar="STUDY")
    rows.add_argument("table", type=Path, metavar="TABLE")
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            show_status(args.folder)
        elif args.command == "export":
            show_export(args.folder, args.dest, not args.without_images)
        else:
            print(f"{write_rows(args.table, args.study, args.folder)} rows of {args.study} in {args.table}")
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The history of a sweep's pieces: pieces.yaml in the sweep folder, one entry per run of the sweep's command.

sweep.yaml and multirun.yaml say what the sweep is, and a rerun that runs only some of its jobs leaves them as
they are; this file says how it was run: when each piece started (the command's start, resattn.clock) and ended,
on which machine, with which overrides, what it did with the jobs, whether it rewrote the sweep's records, and how
it ended. Written by the resattn sweeper, shown by scripts/study.py status.
"""

import os
import socket
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from resattn import clock
from resattn.errors import ConfigError

FILE = "pieces.yaml"
# how a piece ended; "running" while it runs, and for good if it was killed without a chance to say (SIGKILL)
ENDINGS = ("finished", "deadline", "signal", "error")
JOB_KINDS = ("skipped", "resumed", "new", "rerun")  # what a piece did with each job (resattn sweeper)


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def read_pieces(sweep_dir: Path) -> list[dict]:
    """The pieces so far, oldest first; [] without the file. ConfigError (one line) when it cannot be read."""
    path = Path(sweep_dir) / FILE
    if not path.is_file():
        return []
    try:
        pieces = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:
        raise ConfigError(f"{path} cannot be read ({str(err).splitlines()[0]}); repair it or move it away") from None
    if not isinstance(pieces, list) or not all(isinstance(p, dict) for p in pieces):
        raise ConfigError(f"{path} is not a list of pieces; repair it or move it away")
    return pieces


def write_pieces(sweep_dir: Path, pieces: list[dict]) -> None:
    """Atomic, as summary.json: a reader sees the history before or after, never half of it."""
    path = Path(sweep_dir) / FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        "# each run of this sweep's command: when, where, what it did with the jobs, how it ended\n"
        + OmegaConf.to_yaml(OmegaConf.create(pieces))
    )
    os.replace(tmp, path)


def start(sweep_dir: Path, overrides: list[str], jobs: dict[str, int], records: str) -> None:
    """Append this piece, as running. `jobs`: how many it skips, resumes, starts new and reruns from scratch;
    `records`: what it did with sweep.yaml and multirun.yaml (written, rewritten or kept)."""
    pieces = read_pieces(sweep_dir)
    pieces.append(
        {
            "started": timestamp(clock.STARTED),
            "ended": None,
            "host": socket.gethostname(),
            "overrides": list(overrides),
            "jobs": {k: jobs.get(k, 0) for k in JOB_KINDS},
            "records": records,
            "ended_by": "running",
        }
    )
    write_pieces(sweep_dir, pieces)


def end(sweep_dir: Path, ended_by: str, note: str = "", not_started: int = 0) -> None:
    """The last piece (this one) ended now, by one of ENDINGS; `note`: a signal's name, an error's line;
    `not_started`: how many of the jobs it was to run never started (a deadline, a stop)."""
    pieces = read_pieces(sweep_dir)
    pieces[-1].update(ended=timestamp(datetime.now().timestamp()), ended_by=ended_by, not_started=not_started)
    if note:
        pieces[-1]["note"] = note
    write_pieces(sweep_dir, pieces)


def describe(piece: dict) -> str:
    """One line: `2026-12-02 17:18:38 to 17:30:02 on node12: 2 skipped, 1 resumed; records kept; ended by deadline`
    (the times as the machine that ran the piece wrote them, pieces.yaml adds its time zone)."""
    started, ended = (str(piece.get(k) or "?")[:19].replace("T", " ") for k in ("started", "ended"))
    jobs = ", ".join(f"{n} {kind}" for kind, n in (piece.get("jobs") or {}).items() if n) or "no job"
    jobs += f" ({piece['not_started']} of them not started)" if piece.get("not_started") else ""
    how = piece.get("ended_by", "?")
    how = "still running, or killed before it could say" if how == "running" else f"ended by {how}"
    note = f" ({piece['note']})" if piece.get("note") else ""
    return (
        f"{started} to {ended[11:] if ended[:10] == started[:10] else ended} on {piece.get('host', '?')}: {jobs}; "
        f"records {piece.get('records', '?')}; {how}{note}"
    )

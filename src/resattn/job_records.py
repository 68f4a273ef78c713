"""A job's Hydra records land in its folder only once the job starts, so a refused command changes no file of an
earlier run.

Hydra writes a job's config.yaml, hydra.yaml and overrides.yaml before it calls the task, and its log file takes
every line the task logs: a command refused by the task (a changed rerun, other images, a bad value) would
rewrite a finished run's record. So configs/config.yaml points `hydra.output_subdir` at PENDING and the job
log's file handler at HeldFileHandler: the training job moves the record into .hydra/ and releases the held log
lines when it starts (`keep`, engine.prepare's on_start) or when it writes an outcome into the folder (a failure);
a refusal drops the pending record (`drop`) and its held lines die with the process.
"""

import logging
import os
import shutil
from pathlib import Path

PENDING = ".hydra-pending"  # hydra.output_subdir (configs/config.yaml)
RECORD = ".hydra"  # where readers find a job's record (the report, study status, the sweeper)


class HeldFileHandler(logging.FileHandler):
    """The job's log file, opened and written only once `release` is called; the lines before are held."""

    def __init__(self, filename, mode: str = "a", encoding: str | None = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.held: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            super().emit(record)
        else:
            self.held.append(record)

    def release(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            super().emit(record)


def held_handlers() -> list[HeldFileHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, HeldFileHandler)]


def keep(run_dirs: list[Path]) -> None:
    """The jobs start: their pending records replace .hydra/ and their log files get the held lines."""
    for run_dir in map(Path, run_dirs):
        pending = run_dir / PENDING
        if pending.is_dir():
            (run_dir / RECORD).mkdir(exist_ok=True)
            for path in pending.iterdir():
                os.replace(path, run_dir / RECORD / path.name)
            pending.rmdir()
    folders = {Path(d).resolve() for d in run_dirs}
    for handler in held_handlers():
        if Path(handler.baseFilename).resolve().parent in folders:  # both resolved: /tmp may be a link
            handler.release()


def drop(run_dirs: list[Path]) -> None:
    """The jobs never started: their folders keep the record they had."""
    for run_dir in map(Path, run_dirs):
        shutil.rmtree(run_dir / PENDING, ignore_errors=True)

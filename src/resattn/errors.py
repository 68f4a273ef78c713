"""The bottom floor: the errors every layer raises, and the one config flattening and folder check they all
share."""

import json
import signal
from pathlib import Path


class ConfigError(ValueError):
    """A bad config value or input; str(err) is the one line shown to the user."""


class Diverged(RuntimeError):
    """A non-finite training loss: the run (or member) is recorded `diverged` at its step."""


class StopSweep(Exception):
    """A job's stop (a deadline, a signal) raised to end the sweep where an exit would abandon other jobs: in a
    joblib worker, a SystemExit makes joblib drop every other worker mid-step. `code`: the exit code it stands for."""

    def __init__(self, code: int):
        self.code = code
        super().__init__(f"stopped, exit code {code}")


class Interrupted(Exception):
    """A stop was asked for: a signal (`signum`), or trainer.deadline (signum None). Checkpoints are saved
    before this is raised; the same command resumes."""

    DEADLINE_EXIT = 124  # as timeout(1) exits

    def __init__(self, signum: int | None):
        self.signum = signum
        self.reason = "deadline" if signum is None else signal.Signals(signum).name
        super().__init__(self.reason)

    @property
    def exit_code(self) -> int:
        return self.DEADLINE_EXIT if self.signum is None else 128 + self.signum


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become JSON text, so every value can be compared and hashed."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def file_in_the_way(folder) -> Path | None:
    """The file that keeps `folder` from being made (`folder` itself, or the nearest existing path above it
    when that is a file); None when it is a folder or can be made one."""
    for path in (Path(folder), *Path(folder).parents):
        if path.exists():
            return None if path.is_dir() else path
    return None

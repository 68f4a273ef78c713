"""Checkpoints: written atomically, loaded with weights_only=True so a file can never run code."""

import os
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from resattn.errors import ConfigError, flatten
from resattn.identity import first_difference

# 3: the data's fingerprint, the precision and the pieces trained so far, as records.save writes them
FORMAT = "resattn-checkpoint-3"


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": np_state["state"]["pos"],
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def what_is_wrong(path: Path, err: Exception) -> str:
    """What is wrong with a file torch.load refused, in words: torch's own exception often says
    nothing of the file ("list index out of range" for a text file)."""
    path = Path(path)
    if path.is_dir():
        return "it is a folder, not a checkpoint file"
    if path.stat().st_size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        return "not a PyTorch checkpoint file (not a zip archive: another kind of file, or one cut short)"
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return f"a damaged or foreign PyTorch file ({reason})"


def load(path: Path, config: dict, fingerprint: str | None = None, key: str = "trainer.resume") -> dict:
    """The checkpoint at `path`, refused with a ConfigError naming `key` unless it is one of ours, of the same
    experiment as `config` (identity.first_difference: where and how fast it runs may change, nothing else)
    and, when `fingerprint` is given, trained on the same images (data.Dataset.fingerprint)."""
    afresh = "remove it, or give trainer.resume=false, to start afresh"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{key}: no checkpoint at '{path}'") from None
    except Exception as err:  # weights_only: whatever a damaged or foreign file raises, nothing in it ran
        raise ConfigError(
            f"{key}: '{path}' is not a readable resattn checkpoint: {what_is_wrong(path, err)}; {afresh}"
        ) from None
    if (
        isinstance(state, dict)
        and str(state.get("format", "")).startswith("resattn-checkpoint-")
        and state["format"] != FORMAT
    ):
        raise ConfigError(
            f"{key}: '{path}' was written by another version of resattn ({state['format']}, this one "
            f"reads {FORMAT}); {afresh}"
        )
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{key}: '{path}' is not a resattn checkpoint; {afresh}")
    k = first_difference(state["config"], config)
    if k is not None:
        theirs, ours = flatten(state["config"]), flatten(config)
        raise ConfigError(
            f"{key}: '{path}' was made with {k}={theirs.get(k)}, this run has {k}={ours.get(k)} "
            f"(another experiment: {afresh}, or a new run folder)"
        )
    if fingerprint is not None and state["data_fingerprint"] != fingerprint:
        raise ConfigError(
            f"{key}: '{path}' was trained on other images (data fingerprint "
            f"{state['data_fingerprint'][:16]}, data.root now holds {fingerprint[:16]}): point data.root "
            f"at the images it started on, or {afresh}"
        )
    return state

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR_JPEG = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
# A run that takes seconds: tiny model, tiny synthetic data.
TINY = [
    "data=synthetic",
    "model.width=0.25",
    "data.train_size=256",
    "data.test_size=128",
    "trainer.batch_size=64",
    "trainer.epochs=2",
    "trainer.log_every_n_steps=2",
    "tracking.progress=false",
]


def run_train(
    *args: str, cwd: Path = ROOT, timeout: float = 240, env: dict | None = None, **popen
) -> subprocess.CompletedProcess:
    """`python -m train ARGS` in a real subprocess; `env`: variables added to this process's."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


@pytest.fixture(scope="session", autouse=True)
def image_cache_of_the_session(tmp_path_factory):
    """data=folder caches decoded images in the user's cache folder: here one of the session's own (the
    subprocesses of run_train inherit it), never the real ~/.cache; a test may set its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
        yield


@pytest.fixture(scope="session")
def cifar_jpeg(tmp_path_factory) -> Path:
    """The offline CIFAR-10 JPEG copy, unpacked once per session; skipped where it is absent."""
    if not CIFAR_JPEG.exists():
        pytest.skip(f"{CIFAR_JPEG} is not here")
    import tarfile

    dest = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(CIFAR_JPEG) as tar:
        tar.extractall(dest, filter="data")
    return dest / "cifar10-jpeg"

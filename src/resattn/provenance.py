"""Which code trained a run: recorded in every piece of it (summary.json and the checkpoint), never part of
"the same experiment" (resattn.identity): code moves between the pieces of a long study, and the record says so.

A piece records `code` (one short label, which the report and `scripts/study.py status` compare), the commit and
whether the tree differed from it (`commit`, `dirty`; None where the code is not in a git checkout), a hash of the
package's own source (`source_hash`, always: it tells two dirty trees, or two copies without git, apart), the
versions of the libraries that compute (`timm_version`, `hydra_version`; torch's is `torch_version`), and for
attention=custom a hash of the module's source file (`custom_source_hash`).

On the bottom floor: nothing from resattn is imported.
"""

import hashlib
import importlib.util
import subprocess
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # src/resattn
SOURCES = PACKAGE.parent  # src/: the package, train.py and the Hydra plugins
CHECKOUT = SOURCES.parent  # the project's root, where configs/ and (in a clone) .git are
# what decides what a run computes: the code and the configs it composes; not tests, docs or scripts
TRAINING_PATHS = ("src", "configs")


def hash_files(paths: list[Path], root: Path) -> str:
    """sha256 over the files' paths (relative to root) and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@cache
def source_hash() -> str:
    """The package's source, train.py, the Hydra plugins and the configs (where they are beside it)."""
    files = [p for p in SOURCES.rglob("*.py") if "__pycache__" not in p.parts]
    files += [p for p in (CHECKOUT / "configs").rglob("*.yaml")] if (CHECKOUT / "configs").is_dir() else []
    return hash_files(files, CHECKOUT)


def git(*args: str) -> str | None:
    """A git command's output in the project's checkout; None without git or outside a checkout."""
    if not (CHECKOUT / ".git").exists():  # a file in a worktree, a folder in a clone
        return None
    try:
        done = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@cache
def commit() -> tuple[str | None, bool | None]:
    """(the checkout's commit, whether src/ or configs/ differ from it); (None, None) without git."""
    sha = git("rev-parse", "HEAD")
    if sha is None:
        return None, None
    changes = git("status", "--porcelain", "--untracked-files=all", "--", *TRAINING_PATHS)
    return sha, bool(changes) if changes is not None else None


def version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(package)
    except PackageNotFoundError:
        return "not installed"


def custom_source_hash(target: str) -> str | None:
    """sha256 of the file that defines attention._target_'s module (its first 16 hex digits); None where it
    cannot be found (the build refuses such a target before this is asked)."""
    module = target.rpartition(".")[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:16]


def label(sha: str | None, dirty: bool | None, source: str) -> str:
    """`git 58b655a1c2d3`, `git 58b655a1c2d3+dirty source 9f8e7d6c5b4a`, or `source 9f8e7d6c5b4a` without git."""
    if sha is None:
        return f"source {source[:12]}"
    return f"git {sha[:12]}" + (f"+dirty source {source[:12]}" if dirty else "")


def code_identity(attention: dict) -> dict:
    """What a piece records of the code that trains it; `attention`: the run's resolved attention config."""
    sha, dirty = commit()
    source = source_hash()
    out = {
        "code": label(sha, dirty, source),
        "commit": sha,
        "dirty": dirty,
        "source_hash": source,
        "timm_version": version("timm"),
        "hydra_version": version("hydra-core"),
    }
    if "_target_" in attention:
        out["custom_source_hash"] = custom_source_hash(str(attention["_target_"]))
    return out

"""One folder of exported operators and networks for the whole test run, so the same ops are not exported
again for every test's service and every measured table (torch takes ~10 s of CPU for the small test space's
ops and anchor networks; dozens of tests start a service that profiles it).

Exports are deterministic functions of their key (tests/test_export.py holds them to it), so a file exported
once serves every later test. A service still gets an artifact folder of its own: hard links to the cached
files, made before it starts, and its new files linked back after it stops. A test may delete or list its
service's files without touching another test's; the service replaces files by rename, never in place, so a
shared inode never changes. A test that writes into its service's model files in place must give the service
its own DNAS_SERVICE_ARTIFACT_DIR (nothing is then seeded or harvested).

Under pytest-xdist the workers of one run share the folder: every write is a link or a rename, so two workers
exporting the same op at once both leave a whole file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Set once per session by tests/conftest.py; None (a helper used outside pytest): nothing is shared.
ROOT: Path | None = None
KINDS = ("onnx", "networks")  # the service's artifact layout: ops by key, anchor networks by key


def onnx_dir(fallback: Path) -> Path:
    """Where exported ops go: the shared folder during a test run, else `fallback`."""
    return ROOT / "onnx" if ROOT is not None else fallback


def _link(src: Path, dst: Path) -> None:
    """dst becomes src's file, if dst does not exist yet; a copy where hard links are refused."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    try:
        os.link(tmp, dst)  # never replaces: a file already there (same key, same bytes) stays
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _sync(src_root: Path, dst_root: Path) -> None:
    for kind in KINDS:
        src = src_root / kind
        if not src.is_dir():
            continue
        dst = dst_root / kind
        dst.mkdir(parents=True, exist_ok=True)
        have = {p.name for p in dst.iterdir()}
        for path in src.glob("*.onnx"):  # never a half-written .tmp
            if path.name not in have:
                _link(path, dst / path.name)


def seed(artifacts: Path) -> None:
    """Give a service about to start the files exported so far."""
    if ROOT is not None:
        _sync(ROOT, artifacts)


def harvest(artifacts: Path) -> None:
    """Keep what a stopped service exported, for the services after it."""
    if ROOT is not None and artifacts.is_dir():
        _sync(artifacts, ROOT)

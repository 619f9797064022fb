"""Shared paths for the deployment tests (deploy/tests): the repository, the built wasm."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="session")
def tollgate_wasm() -> Path:
    """The real tollgate.wasm (`make wasm`); the test run fails, not skips, without it."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = Path(os.environ.get("TOLLGATE_WASM", target / "wasm32-wasip1" / "release" / "tollgate.wasm"))
    assert path.is_file(), f"{path}: not built; run `make wasm` (or set TOLLGATE_WASM)"
    return path

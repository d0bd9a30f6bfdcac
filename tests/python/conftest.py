"""Fixtures shared by the Python tests: where the sources, the lathe binary and the test models are.

ctest runs each test file with LATHE_BIN (the built binary) and LATHE_SOURCE_DIR set; run by hand,
the defaults are this checkout and its build/lathe."""
import os
from pathlib import Path

import pytest

import reference  # noqa: F401 (sets LATHE_THREADS for every lathe the tests start: reference.THREADS)

SOURCE_DIR = Path(os.environ.get("LATHE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
MODELS_DIR = SOURCE_DIR / "data" / "models"


def find_model_dirs(models_dir: Path = MODELS_DIR) -> list:
    """Subdirectories of `models_dir` holding a config.json, sorted by name ([] if none)."""
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if (p / "config.json").is_file())


@pytest.fixture(scope="session")
def source_dir() -> Path:
    """Root of the lathe checkout."""
    return SOURCE_DIR


@pytest.fixture(scope="session")
def lathe_bin() -> Path:
    """The lathe executable (env LATHE_BIN, else build/lathe); errors if it was not built."""
    path = Path(os.environ.get("LATHE_BIN", SOURCE_DIR / "build" / "lathe"))
    if not path.is_file():
        pytest.fail(f"lathe binary not found at {path}: build it (cmake --build build) "
                    "or set LATHE_BIN")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """data/models: the tiny trained test models built by data/build_tiny_models.py."""
    return MODELS_DIR


@pytest.fixture(scope="session")
def model_dirs() -> list:
    """Every model directory (with a config.json) under data/models, sorted; [] before they
    exist."""
    return find_model_dirs()

"""Fixtures of the tuning tests: the training tests' tiny dataset (written through the index
contract) with the fingerprint.json the bundle tests give it, so a study's best trial exports."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "training"))
from _tiny import make_tiny_dataset  # noqa: E402


def _bundle_fixtures():
    spec = importlib.util.spec_from_file_location("_bundle_conftest", TESTS / "bundle" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    root = make_tiny_dataset(tmp_path_factory.mktemp("htiny") / "data")
    _bundle_fixtures().write_tiny_fingerprint(root)
    return root


@pytest.fixture(scope="session")
def tiny48_dataset(tmp_path_factory) -> Path:
    """48 training cases: enough that lr 3e-2 clearly learns within 1-2 epochs (fold-mean val
    AUC ~0.7 after the first, 1.0 by the third) while lr 1e-9 stays near 0.4."""
    return make_tiny_dataset(tmp_path_factory.mktemp("htiny48") / "data", n=48)

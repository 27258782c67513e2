"""Type checkers know which parts a stream type has (runs mypy; about 10-20 s)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TYPING_DIR = Path(__file__).parent / "typing"
sys.path.insert(0, str(TYPING_DIR))

import check_errors  # noqa: E402

pytest.importorskip("mypy")


@pytest.mark.timeout(240)
def test_mypy_rejects_each_misuse_and_accepts_correct_usage() -> None:
    from mypy import api

    stdout, stderr, status = api.run(["--strict", str(TYPING_DIR / "ok_usage.py")])
    assert status == 0, stdout + stderr
    assert check_errors.check() == {}

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/support holds the fakes and process helpers shared by every test module.
sys.path.insert(0, str(Path(__file__).parent))

from support.fake_openai import FakeOpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI.running() as server:
        yield server

"""What every test needs: requests shaped exactly as Loops sends them."""

from __future__ import annotations

import pytest

from tests.support.loops_sender import WEBHOOK_SECRET, LoopsSender


@pytest.fixture
def loops() -> LoopsSender:
    return LoopsSender(WEBHOOK_SECRET)

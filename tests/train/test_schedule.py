"""lr_factor: warm-up, constant and cosine values worked out by hand."""

from __future__ import annotations

import pytest

from ownlm.train.schedule import lr_factor


def test_warmup_then_constant():
    kw = {"warmup_steps": 4, "steps": 10, "schedule": "constant"}
    assert [lr_factor(s, **kw) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_reaches_half_at_midpoint_and_zero_at_end():
    kw = {"warmup_steps": 2, "steps": 12, "schedule": "cosine"}
    assert lr_factor(0, **kw) == pytest.approx(0.5)
    assert lr_factor(2, **kw) == pytest.approx(1.0)
    assert lr_factor(7, **kw) == pytest.approx(0.5)
    assert lr_factor(12, **kw) == pytest.approx(0.0, abs=1e-12)

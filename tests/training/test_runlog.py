"""The logging interface: what satisfies the protocol."""
from __future__ import annotations

from sevila.training.runlog import NullLogger, RunLogger


def test_backends_satisfy_the_protocol():
    assert isinstance(NullLogger(), RunLogger)
    assert not isinstance(object(), RunLogger)

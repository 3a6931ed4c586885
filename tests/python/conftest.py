"""Shared pytest fixtures for the Python-side checks of celeriac's wire formats."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
for path in (HERE, FIXTURES):  # check_reencoded and capture (RedisServer, FixtureError)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture(scope="session")
def redis_url():
    """A private redis-server (free loopback port, temp dir, no persistence) for the session."""
    import capture

    with capture.RedisServer() as server:
        yield server.url

"""Fixtures of the endpoint tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.endpoints.proxy_support import Proxies, proxies_to


@pytest.fixture
def make_proxy() -> Iterator[Proxies]:
    """Proxies where every test gives a fake next hop (test_proxy_session.py overrides it
    with proxies that relay to the test bed's sink)."""
    yield from proxies_to(downstream_port=1)  # nothing listens there: tests pass hop=

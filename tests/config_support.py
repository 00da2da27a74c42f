"""The check shared by the configuration tests: a load that must pass, or fail naming why."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from filterd import config


def check_load(load: Callable[[], object], error: str | None) -> None:
    """With `error` None, `load` must succeed; else it must raise a ConfigError containing it."""
    if error is None:
        load()
        return
    with pytest.raises(config.ConfigError) as caught:
        load()
    assert error in str(caught.value), f"got {caught.value!s}, want it to contain {error!r}"

"""The check shared by the configuration tests: a load that must pass, or fail naming why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from filterd import config
from tests.tables import cases


def check_load(load: Callable[[], object], error: str | None) -> None:
    """With `error` None, `load` must succeed; else it must raise a ConfigError containing it."""
    if error is None:
        load()
        return
    with pytest.raises(config.ConfigError) as caught:
        load()
    assert error in str(caught.value), f"got {caught.value!s}, want it to contain {error!r}"


def check_toml(tmp_path: Path, text: str, error: str | None) -> None:
    """`check_load` for a filterd.toml holding `text`."""
    path = tmp_path / "filterd.toml"
    path.write_text(text)
    check_load(lambda: config.load(path), error)


Case = tuple[str, str, str | None]  # (id, TOML text, error text that must appear, or None)


def load_test(table: list[Case]) -> Callable[[Path, str, str | None], None]:
    """The one test of a table of TOML cases: each loads, or fails naming why."""

    @pytest.mark.parametrize(("text", "error"), cases(table))
    def test_load(tmp_path: Path, text: str, error: str | None) -> None:
        check_toml(tmp_path, text, error)

    return test_load

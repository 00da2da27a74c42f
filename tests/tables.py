"""Tables of test cases whose rows start with their id: `(id, input..., want...)`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from _pytest.mark import ParameterSet


def cases(table: Sequence[tuple[Any, ...]]) -> list[ParameterSet]:
    """One pytest case per row, named by the row's first item."""
    return [pytest.param(*row[1:], id=row[0]) for row in table]

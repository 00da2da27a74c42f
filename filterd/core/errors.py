"""The core's own exceptions: the only ones any input can make the core raise."""


class CoreError(Exception):
    """Base class of every error the core raises on purpose."""


class InspectorError(CoreError):
    """The content inspector was used out of order (fed after the end, read before it)."""


class PolicyError(CoreError):
    """A policy value is outside what Postfix or the RFCs allow (e.g. a non-5XX reject code)."""

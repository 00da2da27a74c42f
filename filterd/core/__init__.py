"""filterd's sans-I/O core.

Bytes and events go in; findings, "needs a scan" and verdicts come out. Nothing in this
package performs I/O, logs, or imports asyncio, sockets or a third-party protocol library:
`tests/core/test_layering.py` walks the package and fails on such an import.
"""

from filterd.core.budget import ContentBudget
from filterd.core.errors import CoreError, InspectorError
from filterd.core.findings import Finding, Findings, Kind
from filterd.core.inspector import ContentInspector, Framing, dot_stuff
from filterd.core.message import (
    Abort,
    Connect,
    Content,
    EndOfMessage,
    Event,
    Mail,
    MessageCore,
    MessageRecord,
    Rcpt,
)
from filterd.core.pipelining import Violation
from filterd.core.policy import (
    BareNewline,
    EndpointRules,
    InfectedAction,
    OversizePolicy,
    Policy,
    Traces,
)
from filterd.core.traces import Trace
from filterd.core.transaction import ScanOutcome, ScanStatus, Transaction
from filterd.core.verdict import Action, Verdict

__all__ = [
    "Abort",
    "Action",
    "BareNewline",
    "Connect",
    "Content",
    "ContentBudget",
    "ContentInspector",
    "CoreError",
    "EndOfMessage",
    "EndpointRules",
    "Event",
    "Finding",
    "Findings",
    "Framing",
    "InfectedAction",
    "InspectorError",
    "Kind",
    "Mail",
    "MessageCore",
    "MessageRecord",
    "OversizePolicy",
    "Policy",
    "Rcpt",
    "ScanOutcome",
    "ScanStatus",
    "Trace",
    "Traces",
    "Transaction",
    "Verdict",
    "Violation",
    "dot_stuff",
]

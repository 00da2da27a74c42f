"""Render filterd's decisions as Milter responses (Sendmail milter protocol, as Postfix reads it).

Guarantees:
- every reject and tempfail is an SMFIR_REPLYCODE with code, enhanced status and text taken
  from the verdict catalogue: Postfix calls a code without text "malformed", answers
  451 4.3.5 and applies milter_default_action to the rest of the session
  (docs/explanation/milter.md);
- "%" in a text is doubled, since Postfix expands "%%" and drops a single "%" (milter8.c);
- header manipulations and SMFIR_QUARANTINE come before the final reply, as Postfix only
  accepts them in answer to end-of-message, ahead of the verdict (milter8.c, milter8_event);
- copies of filterd's own headers that arrived with the message are deleted before filterd's
  are added, so a sender cannot pass off a forged X-Virus-Status.

purepythonmilter 0.0.1 supplies the packet encodings of the standard responses; its
`Quarantine` cannot be built (abstract, and a verdict where Postfix wants a modification), so
this module has its own.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from purepythonmilter.api import models
from purepythonmilter.protocol import definitions, responses

from filterd.core.verdict import QUARANTINE_VIRUS, Action, Verdict, printable

# Postfix: milter8.c reads the hold reason into a 100-byte field.
_QUARANTINE_REASON_MAX = 100


class Response(Protocol):
    """Anything that encodes to one Milter response payload (command byte + data)."""

    def encode(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Quarantine:
    """SMFIR_QUARANTINE: put the message on Postfix's hold queue; a later reply decides it."""

    reason: str

    def encode(self) -> bytes:
        reason = self.reason.encode("ascii", "replace")[:_QUARANTINE_REASON_MAX]
        return b"q" + reason + b"\0"


@dataclass(frozen=True, slots=True)
class Raw:
    """A response already encoded (used for the OPTNEG reply, see `negotiate`)."""

    payload: bytes

    def encode(self) -> bytes:
        return self.payload


def escape_percent(text: str) -> str:
    """Postfix: milter8.c turns "%%" into "%" and removes a single "%" from reply texts."""
    return text.replace("%", "%%")


def reply_code(verdict: Verdict) -> Response:
    """SMFIR_REPLYCODE "ddd x.y.z text" for a reject or tempfail verdict."""
    digits = (verdict.code // 100, verdict.code // 10 % 10, verdict.code % 10)
    enhanced = tuple(int(part) for part in verdict.status.split("."))
    text = escape_percent(verdict.text)
    if verdict.action is Action.REJECT:
        return responses.RejectWithCode(primary_code=digits, enhanced_code=enhanced, text=text)  # type: ignore[no-any-return]
    return responses.TempFailWithCode(primary_code=digits, enhanced_code=enhanced, text=text)  # type: ignore[no-any-return]


def final_reply(verdict: Verdict) -> Response:
    """The one response that ends a message: continue (accept), discard, or a reply code."""
    if verdict.action is Action.ACCEPT:
        # Sendmail milter protocol: SMFIR_CONTINUE at end-of-message accepts the message
        # with the modifications sent before it.
        return responses.Continue()  # type: ignore[no-any-return]
    if verdict.action is Action.DISCARD:
        return responses.DiscardMessage()  # type: ignore[no-any-return]
    return reply_code(verdict)


def accept_message() -> Response:
    """SMFIR_ACCEPT: accept the message; Postfix sends no more events for it."""
    return responses.Accept()  # type: ignore[no-any-return]


def header_changes(added: Sequence[tuple[str, str]], arrived: Sequence[str]) -> list[Response]:
    """Delete every arrived copy of each header in `added`, then append `added`.

    `arrived` is the header names in the order the message had them. Postfix: SMFIR_CHGHEADER
    counts occurrences of a name from 1, and an empty value deletes; deleting from the last
    occurrence down keeps the remaining indexes valid.
    """
    changes: list[Response] = []
    for name in dict.fromkeys(name for name, _ in added):
        count = sum(1 for seen in arrived if seen.lower() == name.lower())
        changes.extend(
            responses.ChangeHeader(headername=name, headertext="", nth_occurrence=index)
            for index in range(count, 0, -1)
        )
    # Sendmail milter protocol: SMFIR_ADDHEADER appends; the value is sent as given, so a
    # leading space keeps "Name: value" in the queue file.
    changes.extend(
        responses.AppendHeader(headername=name, headertext=f" {value}") for name, value in added
    )
    return changes


def end_of_message(
    verdict: Verdict,
    headers: Sequence[tuple[str, str]],
    arrived: Sequence[str],
    agreed: Negotiated,
    virus: str = "",
) -> list[Response]:
    """Everything filterd answers to SMFIC_BODYEOB, in the order Postfix needs.

    Only the modifications agreed in OPTNEG are sent. Headers are added only if arrived
    copies can also be deleted: filterd's X-Virus-Status next to a forged one would let the
    forgery stand. A quarantine verdict needs SMFIF_QUARANTINE; the session turns it into a
    tempfail before it gets here when that was not agreed.
    """
    answer: list[Response] = []
    if (
        verdict.action is Action.ACCEPT
        and headers
        and _may_change_headers(headers, arrived, agreed)
    ):
        answer.extend(header_changes(headers, arrived))
    if verdict.reason == QUARANTINE_VIRUS.reason and agreed.quarantine:
        # Postfix 3.7 logs "milter triggers HOLD action" without the reason; it is still
        # sent, for Sendmail and for Postfix versions that record it.
        answer.append(Quarantine(f"filterd: virus found: {printable(virus or 'unknown')}"))
    answer.append(final_reply(verdict))
    return answer


def _may_change_headers(
    headers: Sequence[tuple[str, str]], arrived: Sequence[str], agreed: Negotiated
) -> bool:
    if not agreed.add_headers:
        return False
    ours = {name.lower() for name, _ in headers}
    return agreed.change_headers or not any(seen.lower() in ours for seen in arrived)


@dataclass(frozen=True, slots=True)
class Negotiation:
    """What filterd asks of the MTA in its SMFIC_OPTNEG reply."""

    reply_connect: bool  # needed to accept (bypass) a whole session at connect
    reply_mail: bool  # needed to accept (bypass) one message at MAIL FROM
    quarantine: bool


# Sendmail milter protocol (mfdef.h): SMFIF_* actions and SMFIP_* protocol bits, by name for
# the log line that says what the MTA did not offer.
ACTION_NAMES = {0x01: "SMFIF_ADDHDRS", 0x10: "SMFIF_CHGHDRS", 0x20: "SMFIF_QUARANTINE",
                0x100: "SMFIF_SETSYMLIST"}  # fmt: skip
PROTOCOL_NAMES = {
    0x01: "SMFIP_NOCONNECT", 0x02: "SMFIP_NOHELO", 0x04: "SMFIP_NOMAIL", 0x08: "SMFIP_NORCPT",
    0x10: "SMFIP_NOBODY", 0x20: "SMFIP_NOHDRS", 0x40: "SMFIP_NOEOH", 0x80: "SMFIP_NR_HDR",
    0x100: "SMFIP_NOUNKNOWN", 0x200: "SMFIP_NODATA", 0x400: "SMFIP_SKIP",
    0x800: "SMFIP_RCPT_REJ", 0x1000: "SMFIP_NR_CONN", 0x2000: "SMFIP_NR_HELO",
    0x4000: "SMFIP_NR_MAIL", 0x8000: "SMFIP_NR_RCPT", 0x10000: "SMFIP_NR_DATA",
    0x20000: "SMFIP_NR_UNKN", 0x40000: "SMFIP_NR_EOH", 0x80000: "SMFIP_NR_BODY",
    0x100000: "SMFIP_HDR_LEADSPC",
}  # fmt: skip
_ADDHDRS, _CHGHDRS, _QUARANTINE, _SETSYMLIST = 0x01, 0x10, 0x20, 0x100
# The events that get a reply unless their SMFIP_NR_* bit was negotiated (Sendmail milter
# protocol: a reply to every event but macros, ABORT and QUIT, unless "no reply" is agreed).
NO_REPLY_BITS = {
    "connect": 0x1000, "helo": 0x2000, "mail": 0x4000, "rcpt": 0x8000, "data": 0x10000,
    "unknown": 0x20000, "eoh": 0x40000, "body": 0x80000, "header": 0x80,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What filterd and the MTA agreed on for one connection: the offer, intersected."""

    actions: int
    protocol: int
    dropped: tuple[str, ...] = ()  # what filterd asked for and the MTA did not offer

    @property
    def add_headers(self) -> bool:
        return bool(self.actions & _ADDHDRS)

    @property
    def change_headers(self) -> bool:
        return bool(self.actions & _CHGHDRS)

    @property
    def quarantine(self) -> bool:
        return bool(self.actions & _QUARANTINE)

    def replies_to(self, event: str) -> bool:
        return not self.protocol & NO_REPLY_BITS[event]


NOTHING_AGREED = Negotiated(0, 0)


# Sendmail milter protocol: SMFIM_* stages; macros filterd asks for (Postfix: SETSYMLIST
# in the OPTNEG reply replaces milter_*_macros for this milter).
MACROS: dict[Any, set[str]] = {
    definitions.MacroStage.CONNECT: {"j", "v", "{daemon_name}"},
    definitions.MacroStage.MAIL_FROM: {"i", "{auth_authen}", "{auth_type}"},
    definitions.MacroStage.END_OF_MESSAGE: {"i"},
}


def negotiate(
    options: Negotiation, offered_actions: int, offered_protocol: int
) -> tuple[Response, Negotiated]:
    """SMFIC_OPTNEG reply: the events filterd wants, the replies it skips, its actions.

    No reply is sent to RCPT, headers and body chunks (SMFIP_NR_*), so Postfix streams them
    without a round trip; HELO, DATA, end-of-headers and unknown commands are not sent at all.
    SMFIP_HDR_LEADSPC keeps header values byte-exact for the scanner.

    Sendmail milter protocol: the milter may only ask for bits the MTA offered in its
    SMFIC_OPTNEG; what is not offered is left out (and named in `dropped`), and the session
    then answers the events it cannot silence and sends only the agreed modifications.
    purepythonmilter's OptionsNegotiateResponse cannot express such a subset, so the payload
    is built here: "O", version, actions, protocol, then the macro lists.
    """
    protocol, actions = _protocol_flags(options).encode_to_flags_bitmask()
    agreed = Negotiated(
        actions & offered_actions,
        protocol & offered_protocol,
        _names(actions & ~offered_actions, ACTION_NAMES)
        + _names(protocol & ~offered_protocol, PROTOCOL_NAMES),
    )
    payload = b"O" + struct.pack("!III", definitions.VERSION, agreed.actions, agreed.protocol)
    if agreed.actions & _SETSYMLIST:
        payload += b"".join(_symbol_list(stage, names) for stage, names in MACROS.items())
    return Raw(payload), agreed


def _names(bits: int, names: dict[int, str]) -> tuple[str, ...]:
    return tuple(name for bit, name in names.items() if bits & bit)


def _symbol_list(stage: Any, names: set[str]) -> bytes:
    # Sendmail milter protocol: stage (32 bits), then the macro names, space-separated, NUL.
    return struct.pack("!I", stage.value) + " ".join(sorted(names)).encode() + b"\0"


def _protocol_flags(options: Negotiation) -> Any:
    return models.RequestProtocolFlags(
        call_connect=True,
        call_mail_from=True,
        call_rcpt_to=True,
        call_headers=True,
        call_body_chunk=True,
        reply_connect=options.reply_connect,
        reply_mail_from=options.reply_mail,
        can_add_headers=True,
        can_change_headers=True,
        can_quarantine=options.quarantine,
        can_skip_body_chunks=False,
        headers_with_leading_space=True,
    )

"""Warn when the harness probably looks like a trusted client to a Postfix target.

Postfix excludes `smtpd_forbid_bare_newline_exclusions` (default `$mynetworks`) from its
bare-newline checks, and `$mynetworks` holds loopback and, with `mynetworks_style = subnet`,
the local private subnet (postconf(5): smtpd_forbid_bare_newline_exclusions, mynetworks). A run
from such an address sees the lenient "no" behaviour, which internet clients do not. Other
servers have no such default, so the warning is only given for a target that says it is Postfix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def looks_like_postfix(reply_lines: Iterable[str]) -> bool:
    """The greeting or EHLO text names Postfix (the default smtpd_banner is
    "$myhostname ESMTP $mail_name", and mail_name is "Postfix")."""
    return any("postfix" in line.lower() for line in reply_lines)


def _trusted_looking(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not (ip.is_loopback or ip.is_private or ip.is_link_local):
        return None
    return str(ip)


def source_warning(address: str, reply_lines: Iterable[str]) -> str | None:
    """A warning when the target looks like Postfix and `address` is loopback, private or
    link-local; else None."""
    ip = _trusted_looking(address)
    if ip is None or not looks_like_postfix(reply_lines):
        return None
    return (
        f"source address {ip} is loopback or private: Postfix likely counts it in $mynetworks, "
        "the default smtpd_forbid_bare_newline_exclusions, and then applies the lenient 'no' "
        "behaviour to this run only. Internet clients may see different results: probe from "
        "an outside address, or set smtpd_forbid_bare_newline_exclusions empty on the target."
    )

"""Warn when the harness probably looks like a trusted client to the target.

Postfix excludes `smtpd_forbid_bare_newline_exclusions` (default `$mynetworks`) from its
bare-newline checks, and `$mynetworks` holds loopback and, with `mynetworks_style = subnet`,
the local private subnet (smuggling.md §1 item 6, §5.1). A run from such an address sees the
lenient "no" behaviour, which internet clients do not.
"""

from __future__ import annotations

import ipaddress


def source_warning(address: str) -> str | None:
    """A warning text when `address` is loopback, private or link-local, else None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not (ip.is_loopback or ip.is_private or ip.is_link_local):
        return None
    return (
        f"source address {ip} is loopback or private: Postfix likely counts it in $mynetworks, "
        "the default smtpd_forbid_bare_newline_exclusions, and then applies the lenient 'no' "
        "behaviour to this run only. Internet clients may see different results: probe from "
        "an outside address, or set smtpd_forbid_bare_newline_exclusions empty on the target."
    )

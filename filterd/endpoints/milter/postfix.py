"""What the Milter can learn about the Postfix that calls it, from the `v` macro.

Postfix sends `v` ("Postfix 3.7.11", `$mail_name $mail_version`) at connect. The versions
below are those whose cleanup daemon replaces stray CR and LF with a space before any Milter
sees the content (Postfix: cleanup_replace_stray_cr_lf; RELEASE_NOTES-3.9 and the 3.8.5,
3.7.10, 3.6.14, 3.5.24 patch releases). Older versions also lack smtpd_forbid_bare_newline,
the only protection against SMTP smuggling a Postfix with a Milter has
(docs/explanation/smuggling.md).
"""

from __future__ import annotations

import re

# Per stable branch, the first patch release with the fix; 3.9 and later have it from .0.
_FIXED_PATCH = {(3, 5): 24, (3, 6): 14, (3, 7): 10, (3, 8): 5}
_VERSION = re.compile(r"Postfix (\d+)\.(\d+)(?:\.(\d+))?")


def cleans_stray_cr_lf(v_macro: str) -> bool | None:
    """True if this Postfix cleans stray CR/LF before Milters; None if `v` is not Postfix's."""
    match = _VERSION.search(v_macro)
    if match is None:
        return None
    major, minor = int(match.group(1)), int(match.group(2))
    patch = int(match.group(3) or 0)
    if (major, minor) >= (3, 9):
        return True
    fixed = _FIXED_PATCH.get((major, minor))
    return fixed is not None and patch >= fixed

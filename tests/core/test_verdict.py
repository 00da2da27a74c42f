"""The verdict catalogue checks itself: classes, enhanced codes, texts, reasons."""

from __future__ import annotations

import re

import pytest

from filterd.core import verdict as v
from filterd.core.errors import PolicyError

# RFC 3463 §2: class.subject.detail, class is 2, 4 or 5.
ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@pytest.mark.parametrize("verdict", v.CATALOGUE, ids=lambda verdict: verdict.reason)
def test_catalogue_entry_is_consistent(verdict: v.Verdict) -> None:
    code_class = verdict.code // 100
    assert code_class == v.CODE_CLASS[verdict.action], f"{verdict.code} for {verdict.action}"
    assert ENHANCED.fullmatch(verdict.status), f"bad enhanced status {verdict.status!r}"
    # RFC 3463 §2: the class of the enhanced code equals the class of the reply code.
    assert int(verdict.status[0]) == code_class, f"{verdict.status} vs {verdict.code}"
    assert verdict.text.isascii(), repr(verdict.text)
    assert verdict.text.isprintable(), repr(verdict.text)
    assert re.fullmatch(r"[a-z_]+", verdict.reason), verdict.reason


def test_catalogue_names_every_verdict_once() -> None:
    module_verdicts = {id(x) for x in vars(v).values() if isinstance(x, v.Verdict)}
    assert module_verdicts == {id(x) for x in v.CATALOGUE}, "a verdict is missing from CATALOGUE"
    keys = [(x.action, x.reason) for x in v.CATALOGUE]
    assert len(keys) == len(set(keys)), "two verdicts share action and reason"


def test_virus_name_cannot_break_the_reply_line() -> None:
    got = v.REJECT_VIRUS.with_detail("Evil\r\n250 Ok\x00é").reply
    assert got == "550 5.7.1 Virus found: Evil??250 Ok??"


@pytest.mark.parametrize(("code", "ok"), [(521, True), (554, True), (450, False), (250, False)])
def test_with_code_keeps_the_class(code: int, ok: bool) -> None:
    if ok:
        assert v.REJECT_BARE_LF.with_code(code).reply.startswith(f"{code} 5.5.2 ")
    else:
        with pytest.raises(PolicyError):
            v.REJECT_BARE_LF.with_code(code)

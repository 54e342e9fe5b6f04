# Chinese texts use full-width punctuation, which is correct there, not a look-alike.
# ruff: noqa: RUF001
"""Message texts per (template, language), rendered without I/O.

Texts name the amount and currency due and nothing a third party could use against the
borrower. Every electronic message ends with an opt-out line (Reg F 1006.6(e) requires a
clear one; we give it everywhere, not only in the US).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from notifier.domain.model import ChannelName, Language


@dataclass(frozen=True)
class Template:
    subject: str
    body: str


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


_TEMPLATES: dict[tuple[str, Language], Template] = {
    ("warning-reminder", "en"): Template(
        "Payment reminder for loan {loan_ref}",
        "Hello,\n\nour records show {amount} {currency} is due on your loan {loan_ref}. "
        "If you have already paid, please ignore this message. If something makes paying "
        "hard right now, reply or call us: we can agree on a plan.\n"),
    ("warning-reminder", "zh-CN"): Template(
        "贷款 {loan_ref} 还款提醒",
        "您好：\n\n您的贷款 {loan_ref} 目前应还金额为 {amount} {currency}。"
        "如您已还款，请忽略本消息。如暂时还款困难，请回复或致电我们，我们可以协商还款计划。\n"),
    ("formal-notice", "en"): Template(
        "Formal notice: loan {loan_ref}",
        "Hello,\n\nthis is a formal notice that {amount} {currency} remains due on your "
        "loan {loan_ref}. Please pay or contact us to agree on a settlement. If you believe "
        "this amount is wrong, tell us and we will verify it before taking any further "
        "step.\n"),
    ("formal-notice", "zh-CN"): Template(
        "正式通知：贷款 {loan_ref}",
        "您好：\n\n特此正式通知，您的贷款 {loan_ref} 仍有 {amount} {currency} 未偿还。"
        "请尽快还款或与我们联系协商。如您对金额有异议，请告知我们，我们将在采取任何进一步措施前核实。\n"),
    ("guarantor-notice", "en"): Template(
        "Notice to the guarantor of loan {loan_ref}",
        "Hello{name_part},\n\nas guarantor of loan {loan_ref}, we inform you that "
        "{amount} {currency} remains due. Please contact us to discuss how it can be "
        "settled.\n"),
    ("guarantor-notice", "zh-CN"): Template(
        "担保人通知：贷款 {loan_ref}",
        "{name_part}您好：\n\n作为贷款 {loan_ref} 的担保人，特此通知您该贷款仍有 "
        "{amount} {currency} 未偿还。请与我们联系协商处理方式。\n"),
}

_OPT_OUT: dict[Language, str] = {
    "en": "To stop receiving messages on this channel, reply STOP or visit {url}.",
    "zh-CN": "如不希望再通过此渠道接收此类信息，请回复 STOP 或访问 {url}。",
}

ELECTRONIC: frozenset[ChannelName] = frozenset({"email", "sms"})


def available(template: str, language: Language) -> bool:
    return (template, language) in _TEMPLATES


def render(template: str, language: Language, *, channel: ChannelName, loan_id: str,
           amount: Decimal, currency: str, opt_out_url: str,
           name: str | None = None) -> Rendered:
    text = _TEMPLATES[(template, language)]
    name_part = ("" if not name else (f" {name}" if language == "en" else name))
    fields = {"loan_ref": loan_id, "amount": f"{amount:,.2f}", "currency": currency,
              "name_part": name_part}
    body = text.body.format(**fields)
    if channel in ELECTRONIC:
        body += "\n" + _OPT_OUT[language].format(url=opt_out_url) + "\n"
    return Rendered(subject=text.subject.format(**fields), body=body)

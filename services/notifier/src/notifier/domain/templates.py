# Chinese texts use full-width punctuation, which is correct there, not a look-alike.
# ruff: noqa: RUF001
"""Message texts per (template, language), rendered without I/O.

Each template has a long form (e-mail, letter), a short one (SMS) and a call script
(voice), and names the party it is written for: a debtor's text never goes to the
guarantor and the other way round. Texts name the amount and currency due and nothing a
third party could use against the borrower.

Every electronic form (e-mail, SMS) carries its ``{opt_out}`` line in the text itself, so
nobody can add a template without one: :func:`_check` refuses it when the module loads.
Reg F 1006.6(e) requires a clear opt-out in electronic messages; we give it everywhere.
Calls say how to stop calls, too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from collections_kit.currencies import in_minor_units
from notifier.domain.model import ChannelName, Language, Recipient


@dataclass(frozen=True)
class Template:
    audience: Recipient
    subject: str
    body: str
    sms: str
    voice: str


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


_T = Template
_TEMPLATES: dict[tuple[str, Language], Template] = {
    ("warning-reminder", "en"): _T(
        "debtor",
        "Payment reminder for loan {loan_ref}",
        "Hello,\n\nour records show {amount} {currency} is due on your loan {loan_ref}. "
        "If you have already paid, please ignore this message. If something makes paying "
        "hard right now, reply or call us: we can agree on a plan.\n\n{opt_out}\n",
        "Reminder: {amount} {currency} is due on loan {loan_ref}. Paid already? Please "
        "ignore this. Trouble paying? Reply and we will find a plan. {opt_out}",
        "Hello, this is a reminder that {amount} {currency} is due on your loan "
        "{loan_ref}. If paying is hard right now, we can agree on a plan. {opt_out}",
    ),
    ("warning-reminder", "zh-CN"): _T(
        "debtor",
        "贷款 {loan_ref} 还款提醒",
        "您好：\n\n您的贷款 {loan_ref} 目前应还金额为 {amount} {currency}。"
        "如您已还款，请忽略本消息。如暂时还款困难，请回复或致电我们，我们可以协商还款计划。\n\n"
        "{opt_out}\n",
        "还款提醒：贷款 {loan_ref} 应还 {amount} {currency}。如已还款请忽略；如有困难请回复协商。"
        "{opt_out}",
        "您好，提醒您贷款 {loan_ref} 应还 {amount} {currency}。"
        "如暂时还款困难，我们可以协商还款计划。{opt_out}",
    ),
    # Early warning (the workflow's pre-delinquency cases): the loan is not overdue, so the
    # text claims nothing is due; it offers a plan before a payment is missed.
    ("early-warning-offer", "en"): _T(
        "debtor",
        "Your loan {loan_ref}: help before a payment is missed",
        "Hello,\n\nnothing on your loan {loan_ref} is overdue. If your situation has "
        "changed and the coming payments look hard, tell us before one is missed: we can "
        "agree on a plan that fits, without charges for asking.\n\n{opt_out}\n",
        "Loan {loan_ref}: nothing is overdue. If coming payments look hard, reply and we "
        "can agree on a plan before one is missed. {opt_out}",
        "Hello, nothing on your loan {loan_ref} is overdue. If the coming payments look "
        "hard, we can agree on a plan before one is missed. {opt_out}",
    ),
    ("early-warning-offer", "zh-CN"): _T(
        "debtor",
        "贷款 {loan_ref}：在逾期之前为您提供帮助",
        "您好：\n\n您的贷款 {loan_ref} 目前没有逾期。如您的情况有变、后续还款可能有困难，"
        "请在逾期之前告诉我们，我们可以协商适合您的还款计划，咨询不收取任何费用。\n\n{opt_out}\n",
        "贷款 {loan_ref} 目前没有逾期。如后续还款可能有困难，请回复，我们可在逾期前协商还款计划。"
        "{opt_out}",
        "您好，您的贷款 {loan_ref} 目前没有逾期。"
        "如后续还款可能有困难，我们可以在逾期前协商还款计划。{opt_out}",
    ),
    ("formal-notice", "en"): _T(
        "debtor",
        "Formal notice: loan {loan_ref}",
        "Hello,\n\nthis is a formal notice that {amount} {currency} remains due on your "
        "loan {loan_ref}. Please pay or contact us to agree on a settlement. If you believe "
        "this amount is wrong, tell us and we will verify it before taking any further "
        "step.\n\n{opt_out}\n",
        "Formal notice: {amount} {currency} remains due on loan {loan_ref}. Please pay or "
        "contact us to settle. {opt_out}",
        "This is a formal notice that {amount} {currency} remains due on your loan "
        "{loan_ref}. Please pay or contact us to agree on a settlement. {opt_out}",
    ),
    ("formal-notice", "zh-CN"): _T(
        "debtor",
        "正式通知：贷款 {loan_ref}",
        "您好：\n\n特此正式通知，您的贷款 {loan_ref} 仍有 {amount} {currency} 未偿还。"
        "请尽快还款或与我们联系协商。如您对金额有异议，请告知我们，我们将在采取任何进一步措施前核实。\n\n"
        "{opt_out}\n",
        "正式通知：贷款 {loan_ref} 仍有 {amount} {currency} 未偿还，"
        "请尽快还款或联系我们协商。{opt_out}",
        "您好，特此正式通知，您的贷款 {loan_ref} 仍有 {amount} {currency} 未偿还，"
        "请尽快还款或与我们协商。{opt_out}",
    ),
    ("guarantor-notice", "en"): _T(
        "guarantor",
        "Notice to the guarantor of loan {loan_ref}",
        "Hello{name_part},\n\nas guarantor of loan {loan_ref}, we inform you that "
        "{amount} {currency} remains due. Please contact us to discuss how it can be "
        "settled.\n\n{opt_out}\n",
        "As guarantor of loan {loan_ref}: {amount} {currency} remains due. Please contact "
        "us. {opt_out}",
        "Hello, we are calling you as guarantor of loan {loan_ref}: {amount} {currency} "
        "remains due. Please contact us to discuss it. {opt_out}",
    ),
    ("guarantor-notice", "zh-CN"): _T(
        "guarantor",
        "担保人通知：贷款 {loan_ref}",
        "{name_part}您好：\n\n作为贷款 {loan_ref} 的担保人，特此通知您该贷款仍有 "
        "{amount} {currency} 未偿还。请与我们联系协商处理方式。\n\n{opt_out}\n",
        "担保人通知：贷款 {loan_ref} 仍有 {amount} {currency} 未偿还，请与我们联系。{opt_out}",
        "您好，作为贷款 {loan_ref} 的担保人，特此通知您该贷款仍有 {amount} {currency} 未偿还。"
        "{opt_out}",
    ),
    # Reg F 1006.34: what the debt is, how much, and the right to dispute by a date.
    ("validation-notice", "en"): _T(
        "debtor",
        "Validation notice: loan {loan_ref}",
        "Hello{name_part},\n\n{collector} is a debt collector. We are trying to collect a "
        "debt that you owe on loan {loan_ref}. We will use any information you give us to "
        "help collect the debt.\n\n"
        "As of today you owe: {amount} {currency}.\n\n"
        "How can you dispute the debt? Call or write to us by {dispute_by} to dispute all "
        "or part of the debt. If you do not, we will assume that our information is "
        "correct. If you write to us by {dispute_by}, we must stop collection on any amount "
        "you dispute until we send you information that shows you owe the debt. You may "
        "also ask us for the name and address of the original creditor by that date.\n\n"
        "{opt_out}\n",
        "{collector} is a debt collector. Your validation notice for loan {loan_ref} "
        "({amount} {currency}) was sent; dispute by {dispute_by}. {opt_out}",
        "{collector} is a debt collector. We sent you a validation notice about loan "
        "{loan_ref}. You can dispute the debt by {dispute_by}. {opt_out}",
    ),
    ("validation-notice", "zh-CN"): _T(
        "debtor",
        "债务确认通知：贷款 {loan_ref}",
        "{name_part}您好：\n\n{collector} 为债务催收方，现就贷款 {loan_ref} 向您催收欠款。"
        "截至今日，您应还金额为 {amount} {currency}。\n\n"
        "如您对全部或部分债务有异议，请于 {dispute_by} 前致电或致函我们。"
        "如您于该日期前书面提出异议，在我们向您提供债务证明之前，我们将停止对有异议部分的催收。"
        "您也可于该日期前要求我们提供原债权人的名称和地址。\n\n{opt_out}\n",
        "{collector} 为债务催收方。贷款 {loan_ref}（{amount} {currency}）的债务确认通知已发出，"
        "如有异议请于 {dispute_by} 前提出。{opt_out}",
        "{collector} 为债务催收方。我们已向您寄出贷款 {loan_ref} 的债务确认通知，"
        "如有异议请于 {dispute_by} 前提出。{opt_out}",
    ),
}

_OPT_OUT: dict[tuple[Language, ChannelName], str] = {
    ("en", "email"): "To stop receiving e-mails from us, reply STOP or visit {url}.",
    ("en", "sms"): "Reply STOP to stop texts, or visit {url}.",
    ("en", "voice"): "To stop calls from us, tell the agent or visit {url}.",
    ("en", "letter"): "To choose how we contact you, call us or visit {url}.",
    ("zh-CN", "email"): "如不希望再通过电子邮件接收此类信息，请回复 STOP 或访问 {url}。",
    ("zh-CN", "sms"): "回复 STOP 退订短信，或访问 {url}。",
    ("zh-CN", "voice"): "如不希望再接到此类来电，请告知我们或访问 {url}。",
    ("zh-CN", "letter"): "如需选择联系方式，请致电我们或访问 {url}。",
}


def _check() -> None:
    for key, text in _TEMPLATES.items():
        for form in (text.body, text.sms, text.voice):
            if "{opt_out}" not in form:
                raise ValueError(f"template {key} has a form without its opt-out line")


_check()


def available(template: str, language: Language) -> bool:
    return (template, language) in _TEMPLATES


def audience(template: str, language: Language) -> Recipient | None:
    text = _TEMPLATES.get((template, language))
    return text.audience if text else None


def opt_out_line(language: Language, channel: ChannelName, url: str) -> str:
    return _OPT_OUT[(language, channel)].format(url=url)


# Digit grouping and decimal mark per language (CLDR): both languages so far write
# 1,234.50; a language added with other marks (de: 1.234,50) adds its pair here.
_NUMBER_MARKS: dict[Language, tuple[str, str]] = {"en": (",", "."), "zh-CN": (",", ".")}


def written_amount(amount: Decimal, currency: str, language: Language) -> str:
    """``amount`` as the borrower reads it: at its currency's ISO 4217 minor unit (JPY
    150,000; KWD 12.345; never rounded), grouped and marked as their language does."""
    group, point = _NUMBER_MARKS[language]
    plain = format(in_minor_units(amount, currency), ",f")
    return plain.replace(",", "\0").replace(".", point).replace("\0", group)


def render(
    template: str,
    language: Language,
    *,
    channel: ChannelName,
    loan_id: str,
    amount: Decimal,
    currency: str,
    opt_out_url: str,
    name: str | None = None,
    dispute_by: date | None = None,
    collector: str = "The lender",
) -> Rendered:
    text = _TEMPLATES[(template, language)]
    name_part = "" if not name else (f" {name}" if language == "en" else name)
    fields = {
        "loan_ref": loan_id,
        "amount": written_amount(amount, currency, language),
        "currency": currency,
        "name_part": name_part,
        "collector": collector,
        "dispute_by": dispute_by.isoformat() if dispute_by else "",
        "opt_out": opt_out_line(language, channel, opt_out_url),
    }
    form = {"sms": text.sms, "voice": text.voice}.get(channel, text.body)
    return Rendered(subject=text.subject.format(**fields), body=form.format(**fields))

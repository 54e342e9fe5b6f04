"""Letters for print: HTML escaped, PDF deterministic, Chinese with or without an embedded
font."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from reportlab.pdfbase.ttfonts import TTFError

from notifier.adapters.letters import packaged_cjk_font, render_pdf
from notifier.domain import templates
from notifier.domain.letters import Letter, render_html


def letter(language: str = "en", **changes: object) -> Letter:
    text = templates.render(
        "formal-notice",
        language,  # type: ignore[arg-type]
        channel="letter",
        loan_id="L-1",
        amount=Decimal("99.5"),
        currency="CNY",
        opt_out_url="https://x/prefs",
    )
    fields: dict[str, object] = {
        "command_id": "cmd-1",
        "loan_id": "L-1",
        "language": language,
        "template": "formal-notice",
        "dated": date(2026, 11, 23),
        "subject": text.subject,
        "body": text.body,
        "name": "Pat <Doe>",
        "address": "1 Main St, Springfield",
    }
    fields.update(changes)
    return Letter(**fields)  # type: ignore[arg-type]


def test_the_html_letter_escapes_what_it_is_given() -> None:
    html = render_html(letter())
    assert "Pat &lt;Doe&gt;<br>1 Main St<br>Springfield" in html
    assert "<h1>Formal notice: loan L-1</h1>" in html
    assert "99.50 CNY" in html
    assert "2026-11-23" in html


def test_the_pdf_is_deterministic_so_a_retry_stores_the_same_letter() -> None:
    first, again = render_pdf(letter()), render_pdf(letter())
    assert first.startswith(b"%PDF")
    assert first == again
    assert render_pdf(letter(name="Someone Else")) != first


def test_a_chinese_letter_embeds_the_packaged_font_so_any_reader_shows_it() -> None:
    pdf = render_pdf(letter("zh-CN", address="北京市朝阳区某路 1 号"))
    assert b"FontFile2" in pdf  # the TrueType program itself travels in the file
    assert b"+NotoSansSC-" in pdf  # a subset (tagged ABCDEF+) of the packaged font
    assert b"ToUnicode" in pdf  # so the text can be searched and copied back
    assert b"STSong-Light" not in pdf  # a font by name only is boxes on a bare reader


def test_the_embedded_font_is_a_subset_not_the_whole_font() -> None:
    pdf = render_pdf(letter("zh-CN", address="北京市朝阳区某路 1 号"))
    assert len(pdf) < packaged_cjk_font().stat().st_size // 100


def test_a_chinese_letter_can_embed_another_truetype_font(tmp_path: Path) -> None:
    other = tmp_path / "Other.ttf"
    other.write_bytes(packaged_cjk_font().read_bytes())
    assert b"FontFile2" in render_pdf(letter("zh-CN"), cjk_font=other)


def test_the_configured_font_is_the_one_used(tmp_path: Path) -> None:
    not_a_font = tmp_path / "NotAFont.ttf"
    not_a_font.write_bytes(b"not a font")
    with pytest.raises(TTFError):
        render_pdf(letter("zh-CN"), cjk_font=not_a_font)

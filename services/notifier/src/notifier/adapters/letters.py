"""Letters for print: HTML and PDF rendered here, stored for the print run, counted as sent.

The PDF is drawn with reportlab. Chinese is set in Noto Sans SC, embedded (subset: only the
glyphs a letter uses), from the ``justmytype-intl-cjk`` wheel: a font only referenced by
name (Adobe's STSong-Light, the earlier default) shows as empty boxes on a reader or print
host without a CJK font, and a system font package is not something every host has. It is
the TrueType build, which reportlab can embed (Noto Sans CJK's OpenType/CFF cannot be).
``NOTIFIER_LETTER_CJK_FONT`` names another TrueType font (.ttf or .ttc) to embed instead.
Rendering is deterministic (``invariant``): re-rendering one command after a retry gives
the same bytes and the same hash, and the stored row is simply replaced.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.clock import Clock
from collections_kit.pii import KeyRing
from notifier.adapters.tables import letters
from notifier.app.ports import Delivery, OutgoingMessage, SendError
from notifier.domain.letters import Letter, render_html

log = logging.getLogger(__name__)


def packaged_cjk_font() -> Path:
    """Noto Sans SC as the ``justmytype-intl-cjk`` wheel installs it."""
    return Path(str(files("justmytype_intl_cjk") / "fonts/ofl/notosanssc/NotoSansSC[wght].ttf"))


@cache
def _cjk_font(path: Path | None = None) -> str:
    """Registers the font once per process (the file is parsed once) and returns its name."""
    path = path or packaged_cjk_font()
    name = f"LetterCJK-{path.stem}"
    pdfmetrics.registerFont(TTFont(name, str(path), subfontIndex=0))
    return name


def render_pdf(letter: Letter, cjk_font: Path | None = None) -> bytes:
    chinese = letter.language == "zh-CN"
    font = _cjk_font(cjk_font) if chinese else "Times-Roman"
    bold = font if chinese else "Times-Bold"
    wrap = "CJK" if chinese else None
    body = ParagraphStyle(
        "body", fontName=font, fontSize=11, leading=16, spaceAfter=8, wordWrap=wrap
    )
    right = ParagraphStyle("right", parent=body, alignment=2)
    title = ParagraphStyle(
        "title", parent=body, fontName=bold, fontSize=13, leading=18, spaceBefore=6, spaceAfter=12
    )
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10)
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=25 * mm,
        bottomMargin=25 * mm,
        invariant=1,
        title=letter.subject,
        author=letter.sender,
    )
    flow = [
        Paragraph(f"{escape(letter.sender)}<br/>{letter.dated.isoformat()}", right),
        Spacer(1, 10 * mm),
        Paragraph("<br/>".join(escape(line) for line in letter.address_lines), body),
        Spacer(1, 10 * mm),
        Paragraph(escape(letter.subject), title),
    ]
    flow += [Paragraph(escape(p).replace("\n", "<br/>"), body) for p in letter.paragraphs]
    flow += [
        Spacer(1, 8 * mm),
        Paragraph(f"Ref. {escape(letter.loan_id)} / {escape(letter.command_id)}", small),
    ]
    doc.build(flow)
    return buffer.getvalue()


def letter_of(message: OutgoingMessage, sender: str) -> Letter:
    if message.dated is None:
        raise SendError("letter_undated", permanent=True)
    return Letter(
        command_id=message.command_id,
        loan_id=message.loan_id,
        language=message.language,
        template=message.template,
        dated=message.dated,
        subject=message.subject,
        body=message.body,
        name=message.name,
        address=message.address,
        sender=sender,
    )


@dataclass(frozen=True)
class StoredLetter:
    command_id: str
    template: str
    html: str
    pdf: bytes
    pdf_sha256: str


def open_letter(row: Any, ring: KeyRing) -> StoredLetter:
    """A ``letters`` row with its HTML and PDF (name and address are on them) opened."""
    return StoredLetter(
        command_id=row.command_id,
        template=row.template,
        html=ring.open(row.html, aad=f"letters.html:{row.command_id}") or "",
        pdf=ring.open_bytes(row.pdf, aad=f"letters.pdf:{row.command_id}"),
        pdf_sha256=row.pdf_sha256,
    )


class PrintChannel:
    """Renders the letter and hands it to print (the ``letters`` table is the print queue).

    The HTML and the PDF carry the name and postal address: both are sealed at rest; the
    print run opens them with :func:`open_letter`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        sender: str,
        ring: KeyRing,
        cjk_font: Path | None = None,
    ) -> None:
        self._engine = engine
        self._ring = ring
        self._clock = clock
        self._sender = sender
        self._cjk_font = cjk_font
        _cjk_font(cjk_font)  # a missing or unusable font stops the start, not a letter

    async def send(self, message: OutgoingMessage) -> Delivery:
        letter = letter_of(message, self._sender)
        html = render_html(letter)
        pdf = await asyncio.to_thread(render_pdf, letter, self._cjk_font)
        digest = hashlib.sha256(pdf).hexdigest()
        try:
            async with self._engine.begin() as conn:
                stmt = pg_insert(letters).values(
                    command_id=letter.command_id,
                    loan_id=letter.loan_id,
                    language=letter.language,
                    template=letter.template,
                    html=self._ring.seal(html, aad=f"letters.html:{letter.command_id}"),
                    pdf=self._ring.seal_bytes(pdf, aad=f"letters.pdf:{letter.command_id}"),
                    pdf_sha256=digest,
                    rendered_at=self._clock.now(),
                )
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[letters.c.command_id],
                        set_={
                            "html": stmt.excluded.html,
                            "pdf": stmt.excluded.pdf,
                            "pdf_sha256": stmt.excluded.pdf_sha256,
                            "rendered_at": stmt.excluded.rendered_at,
                        },
                    )
                )
        except Exception as exc:
            # The statement's parameters hold the address: only the error's kind goes on.
            raise SendError(
                f"print_queue_unavailable:{type(exc).__name__}", permanent=False
            ) from None
        log.info(
            "letter rendered and queued for print",
            extra={
                "command_id": message.command_id,
                "loan_id": message.loan_id,
                "pdf_sha256": digest,
                "pdf_bytes": len(pdf),
            },
        )
        return Delivery("sent", provider_ref=f"sha256:{digest}")

"""A letter for print: the same text as the e-mail, laid out as a letter, as HTML.

Pure: the page is a string built from a fixed template with every value escaped. The PDF
is drawn from the same :class:`Letter` by the print adapter, so both say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from html import escape

from notifier.domain.model import Language


@dataclass(frozen=True)
class Letter:
    command_id: str
    loan_id: str
    language: Language
    template: str
    dated: date
    subject: str = field(repr=False)
    body: str = field(repr=False)
    # Personal data: the addressee's name and postal address.
    name: str | None = field(default=None, repr=False)
    address: str = field(default="", repr=False)
    sender: str = "Collections department"

    @property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in self.body.split("\n\n") if p.strip()]

    @property
    def address_lines(self) -> list[str]:
        lines = [self.name] if self.name else []
        lines += [
            part.strip() for part in self.address.replace(",", "\n").splitlines() if part.strip()
        ]
        return lines


_PAGE = """<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<title>{subject}</title>
<style>
  @page {{ size: A4; margin: 25mm 20mm; }}
  body {{ font-family: serif; font-size: 11pt; line-height: 1.45; }}
  .sender {{ text-align: right; }}
  .address {{ margin: 12mm 0 10mm; }}
  .reference {{ color: #444; font-size: 9pt; }}
  h1 {{ font-size: 13pt; margin: 8mm 0 6mm; }}
</style>
</head>
<body>
<p class="sender">{sender}<br>{dated}</p>
<p class="address">{address}</p>
<h1>{subject}</h1>
{paragraphs}
<p class="reference">Ref. {loan_id} / {command_id}</p>
</body>
</html>
"""


def render_html(letter: Letter) -> str:
    return _PAGE.format(
        lang=escape(letter.language),
        subject=escape(letter.subject),
        sender=escape(letter.sender),
        dated=letter.dated.isoformat(),
        address="<br>".join(escape(line) for line in letter.address_lines),
        paragraphs="\n".join(
            f"<p>{escape(p).replace(chr(10), '<br>')}</p>" for p in letter.paragraphs
        ),
        loan_id=escape(letter.loan_id),
        command_id=escape(letter.command_id),
    )

"""The measures of ``GET /v1/kpis`` (docs/measures.md) for people: a table per group for the
terminal and a chart (PNG) of the stage funnel and the roll rates by stage, groups side by
side. ``make demo`` prints the one and writes the other for its champion-challenger split.

Both read the endpoint's document as it is; nothing is recomputed here. A measure whose
denominator is 0 (no agency placements: no liquidation rate) is shown as such, never as 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from collections_kit.vocabulary import Stage

# The measures in the order a collections manager reads them, each with its label and
# whether its value is a share (printed as a percentage) or a plain number.
MEASURES: tuple[tuple[str, str, bool], ...] = (
    ("roll_rate", "roll rate", True),
    ("cure_rate", "cure rate", True),
    ("promise_kept_rate", "promise-kept rate", True),
    ("right_party_contact_rate", "right-party-contact rate", True),
    ("contacts_per_cure", "contacts per cure", False),
    ("days_to_cure", "days to cure", False),
    ("liquidation_rate", "liquidation rate", True),
)
NO_VARIANT = "(no variant)"


def group_label(group: str) -> str:
    return group or NO_VARIANT


def period(report: Mapping[str, Any]) -> str:
    """'2026-11-01 00:00 to 2026-12-01 00:00 UTC' from the document's from and to (to the
    minute: the endpoint echoes them to the microsecond)."""
    ends = [datetime.fromisoformat(report[k]).astimezone(UTC) for k in ("from", "to")]
    return " to ".join(f"{e:%Y-%m-%d %H:%M}" for e in ends) + " UTC"


def _amount(x: float) -> str:
    """204 -> '204', 1216.25 -> '1,216.25': numerators are counts, days or amounts."""
    return f"{x:,.2f}".rstrip("0").rstrip(".")


def format_measure(measure: Mapping[str, Any], *, share: bool) -> str:
    """'31.0% (204/658)'; 'n/a (0/0)' when there was nothing to measure."""
    value = measure["value"]
    counts = f"({_amount(measure['numerator'])}/{_amount(measure['denominator'])})"
    if value is None:
        return f"n/a {counts}"
    return f"{value:.1%} {counts}" if share else f"{value:.2f} {counts}"


def format_measures(report: Mapping[str, Any]) -> str:
    """The measures per group as a text table: one row per measure, one column per group,
    then the contacts suppressed by reason."""
    groups: Sequence[Mapping[str, Any]] = report["groups"]
    rows: list[tuple[str, list[str]]] = [("cases", [str(g["cases"]) for g in groups])]
    rows += [
        (label, [format_measure(g["measures"][key], share=share) for g in groups])
        for key, label, share in MEASURES
    ]
    reasons = sorted({r for g in groups for r in g["suppressed_contacts"]})
    rows += [
        (f"suppressed: {reason}", [str(g["suppressed_contacts"].get(reason, 0)) for g in groups])
        for reason in reasons
    ]
    header = [group_label(g["group"]) for g in groups]
    first = max(len(label) for label, _ in rows)
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(header)]
    lines = [
        f"Measures by {report['group_by']}, {period(report)} (GET /v1/kpis; docs/measures.md):",
        "  " + " " * first + "".join(f"  {h:>{w}}" for h, w in zip(header, widths, strict=True)),
    ]
    for label, cells in rows:
        lines.append(
            f"  {label:<{first}}"
            + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    if not groups:
        lines.append("  (no cases in the period)")
    return "\n".join(lines)


def stage_order(groups: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """The stages in the groups' ``key`` (stage_funnel, roll_rates_by_stage) in escalation
    order, then any the vocabulary does not know as listed (a new stage shows, not vanishes)."""
    seen = [s for g in groups for s in g[key]]
    known = [s.value for s in Stage if s.value in seen]
    return known + list(dict.fromkeys(s for s in seen if s not in known))


def draw_chart(report: Mapping[str, Any], path: Path) -> Path:
    """Two bar charts side by side, one bar per group at each stage: the stage funnel (cases
    that entered the stage in the period) and the roll rate of each stage. A stage with
    nothing to roll has no bar and reads 'n/a'. Writes a PNG to ``path`` and returns it."""
    groups: Sequence[Mapping[str, Any]] = report["groups"]
    funnel_stages = stage_order(groups, "stage_funnel")
    roll_stages = stage_order(groups, "roll_rates_by_stage")  # enforcement cannot roll
    # The Agg canvas directly, not pyplot: no global figure state, no display needed.
    figure = Figure(figsize=(13, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    funnel_ax, roll_ax = figure.subplots(1, 2)
    width = 0.8 / max(len(groups), 1)

    def offsets(n: int, stages: list[str]) -> list[float]:
        return [p - 0.4 + width * (n + 0.5) for p in range(len(stages))]

    for n, group in enumerate(groups):
        label = group_label(group["group"])
        entered = [group["stage_funnel"].get(s, 0) for s in funnel_stages]
        bars = funnel_ax.bar(offsets(n, funnel_stages), entered, width, label=label)
        funnel_ax.bar_label(bars, fontsize=8)
        rolls = [group["roll_rates_by_stage"].get(s, {}).get("value") for s in roll_stages]
        heights = [100 * (r or 0) for r in rolls]
        bars = roll_ax.bar(offsets(n, roll_stages), heights, width, label=label)
        roll_ax.bar_label(
            bars, labels=["n/a" if r is None else f"{r:.0%}" for r in rolls], fontsize=8
        )
    funnel_ax.set_title("Stage funnel: cases that entered each stage")
    funnel_ax.set_ylabel("cases")
    roll_ax.set_title("Roll rate by stage: share moved to a later stage")
    roll_ax.set_ylabel("%")
    roll_ax.set_ylim(0, 105)
    for ax, stages in ((funnel_ax, funnel_stages), (roll_ax, roll_stages)):
        ax.set_xticks(range(len(stages)), [s.replace("_", " ") for s in stages], rotation=15)
        if groups:
            ax.legend(title=report["group_by"])
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"Collections measures by {report['group_by']}, {period(report)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path

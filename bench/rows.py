"""Rows written per loan, table by table: the pipeline of ``make bench`` at a small size.

``pipeline.rows_written_per_loan`` is deterministic (unlike the timings), so a change
meant to write fewer rows can be measured in a minute without the whole bench::

    uv run --frozen python -m bench.rows            # 2,000 loans
    BENCH_ROWS_LOANS=500 uv run --frozen python -m bench.rows

It prints the total and each table's inserted / updated / deleted rows per loan. The
fleet listens on ports from ``BENCH_ROWS_PORT`` (18610), away from a running bench's.
"""

from __future__ import annotations

import asyncio
import os
import sys

from bench.run import env_int, pipeline
from scripts import stack as local_stack


async def measure(loans: int, base_port: int) -> dict[str, object]:
    local_stack.ensure_up()
    admin_url = os.environ.get("DATABASE_URL", local_stack.DATABASE_URL)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", local_stack.KAFKA_BOOTSTRAP)
    flow, _, _ = await pipeline(admin_url, bootstrap, loans, samples=2, base_port=base_port)
    return flow


def main() -> int:
    flow = asyncio.run(
        measure(env_int("BENCH_ROWS_LOANS", 2_000), env_int("BENCH_ROWS_PORT", 18610))
    )
    print(f"loans {flow['loans']}: rows written per loan {flow['rows_written_per_loan']}")
    print(
        f"records consumed per loan {flow['messages_consumed_per_loan']}; "
        f"{flow['loans_per_s']} loans/s, {flow['machine_cpu_us_per_loan']} us of machine CPU "
        "per loan (timings: the machine's, not the figure)"
    )
    parts: dict[str, float] = flow["cpu_us_per_loan_by_part"]  # type: ignore[assignment]
    print("  of which: " + ", ".join(f"{part} {us}" for part, us in parts.items()))
    by_table: dict[str, dict[str, float]] = flow["rows_by_table"]  # type: ignore[assignment]
    for name, kinds in by_table.items():
        split = ", ".join(f"{kind} {n}" for kind, n in kinds.items())
        print(f"  {name:<40} {sum(kinds.values()):>6.2f}  ({split})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Render docs/RELIABILITY.md from the fault tests' last run (tests/artifacts/reliability.json).

make reliability     # runs tests/integration/test_faults.py, then this
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "artifacts" / "reliability.json"
TARGET = ROOT / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- table: begin -->", "<!-- table: end -->"


def table(rows: dict) -> str:
    lines = [
        "| fault | what the user sees | time to recover (s) | data lost |",
        "|---|---|---|---|",
    ]
    for row in rows.values():
        seconds = "-" if row["recovered_s"] is None else f"{row['recovered_s']:.1f}"
        sees = row["user_sees"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['fault']} | {sees} | {seconds} | {row['data_lost']} |")
    last = max(row["at"] for row in rows.values())
    return "\n".join(lines) + f"\n\nLast run: {last} (tests/integration/test_faults.py).\n"


def main() -> None:
    if not SOURCE.exists():
        sys.exit(f"{SOURCE} is missing: run the fault tests first (make reliability)")
    rows = json.loads(SOURCE.read_text())
    text = TARGET.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    TARGET.write_text(f"{head}{BEGIN}\n{table(rows)}{END}{tail}")
    print(f"{TARGET.relative_to(ROOT)}: {len(rows)} faults")


if __name__ == "__main__":
    main()

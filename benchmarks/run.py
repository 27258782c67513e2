"""Run every benchmark module that exists, print one table, write results/RESULTS.md.

Each module ``benchmarks.bench_*`` exposes ``run() -> list[dict]`` with rows like
``{"benchmark", "variant", "value", "unit"}`` and optionally ``"ratio"``,
``"ratio_vs"``, ``"goal"`` and notes. A module that fails to import or run is
reported in the table; the others still run.

Run: ``python -m benchmarks.run [core http grpc triton compression redis observability]``
(``make bench``; ``triton_stream`` is a name too).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_lines

MODULES = (
    "core",
    "http",
    "grpc",
    "triton",
    "triton_stream",
    "compression",
    "redis",
    "observability",
)
RESULTS = Path(__file__).parent / "results" / "RESULTS.md"
_NOTE_KEYS = ("throughput", "note", "notes", "error", "spread")


def _error_row(name: str, exc: BaseException) -> dict[str, Any]:
    return {
        "benchmark": f"bench_{name}",
        "variant": "error",
        "value": None,
        "unit": "",
        "error": f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300],
    }


def run_module(name: str) -> tuple[list[dict[str, Any]], float]:
    """Run ``benchmarks.bench_<name>``; a failure becomes one error row."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"benchmarks.bench_{name}":
            return [], 0.0  # not written (yet): nothing to report
        traceback.print_exc()
        return [_error_row(name, exc)], time.perf_counter() - start
    except Exception as exc:
        traceback.print_exc()
        return [_error_row(name, exc)], time.perf_counter() - start
    try:
        rows = list(module.run())
    except BaseException as exc:  # a sub-benchmark must not kill the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        rows = [_error_row(name, exc)]
    return rows, time.perf_counter() - start


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _goal_met(row: dict[str, Any]) -> str:
    goal, ratio = row.get("goal"), row.get("ratio")
    if not goal or ratio is None:
        return ""
    try:
        target = float(str(goal).replace(">=", "").replace("x", "").strip())
    except ValueError:
        return ""
    return "yes" if ratio >= target else "**no**"


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| benchmark | variant | value | unit | ratio | goal | met | notes |",
        "|---|---|---:|---|---:|---|---|---|",
    ]
    for r in rows:
        value = r.get("value")
        if isinstance(value, (int, float)) and value == value:
            shown = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
        else:
            shown = "" if value is None else _cell(value)
        ratio = r.get("ratio")
        ratio_s = f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else ""
        if ratio_s and r.get("ratio_vs"):
            ratio_s += f" vs {r['ratio_vs']}"
        notes = [_cell(r[k]) for k in _NOTE_KEYS if r.get(k)]
        if "us_per_item" in r:
            notes.append(f"{r['us_per_item']:.2f} µs/item")
        lines.append(
            f"| {_cell(r.get('benchmark', ''))} | {_cell(r.get('variant', ''))} | {shown} | "
            f"{_cell(r.get('unit', ''))} | {ratio_s} | {_cell(r.get('goal', ''))} | "
            f"{_goal_met(r)} | {'; '.join(notes)} |"
        )
    return lines


def main(argv: list[str]) -> int:
    names = [n for n in argv if n in MODULES] or list(MODULES)
    rows: list[dict[str, Any]] = []
    timings: list[str] = []
    for name in names:
        print(f"== bench_{name}", flush=True)
        module_rows, seconds = run_module(name)
        rows.extend(module_rows)
        if module_rows:
            timings.append(f"bench_{name} {seconds:.0f} s")
    table = format_table(rows)
    print("\n".join(table))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "\n".join(
            [
                "# Benchmark results",
                "",
                "Written by `make bench` (`python -m benchmarks.run`). Ratios compare "
                "variants measured side by side in the same run; each module's own file "
                "in this directory has its details.",
                "",
                *machine_lines(),
                f"- modules: {', '.join(timings) or 'none'}",
                "",
                *table,
                "",
            ]
        )
    )
    print(f"\nwritten to {RESULTS}")
    return 1 if any(r.get("variant") == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

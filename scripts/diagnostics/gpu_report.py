"""The short report of ``scripts/gpu_paper.sh``: its benchmark table and each task's run, as markdown on stdout.

Reads ``OUT/bench.json`` (``benchmarks/bench_throughput.py --json``), and per task ``OUT/<task>/online/metrics.jsonl``
(one row per epoch) and ``OUT/<task>/eval.json`` (``vlmq eval --out``). Run: ``python scripts/diagnostics/gpu_report.py
OUT``. What is missing (a part the window did not reach) is said so, not left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def bench_lines(path: Path) -> list[str]:
    if not path.is_file():
        return ["No benchmark figures (bench.json is missing: the benchmark did not finish)."]
    data = json.loads(path.read_text())
    lines = [f"Device {data['device']}; {data['hardware']}.", ""]
    lines += [
        "| model | turns | arm | ms/update | first pass ms | tokens/s | launches or ops | busy | peak MB | x plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    plain: dict[tuple, float] = {}
    for r in data["results"]:
        if r["arm"].startswith("generate"):
            continue
        key = (r["model"], r["turns"])
        if r["arm"] == "plain LoRA eager":
            plain[key] = r["ms"]
        busy = "" if r.get("busy") is None else f"{100 * r['busy']:.0f}%"
        ratio = f"x{r['ms'] / plain[key]:.2f}" if key in plain else ""
        lines.append(
            f"| {r['model']} | {r['turns']} | {r['arm']} | {r['ms']:.1f} | {r['first_ms']:.0f} | "
            f"{r['tokens'] * 1000 / r['ms']:.0f} | {r['ops']} | {busy} | {r.get('peak_mb', 0):.0f} | {ratio} |"
        )
    for r in data["results"]:
        if r["arm"].startswith("generate"):
            lines.append(
                f"\n{r['model']}: {r['arm']} replies (greedy, <= 24 new tokens): {r['ms']:.0f} ms, "
                f"{r['new_tokens'] * 1000 / r['ms']:.0f} new tokens/s."
            )
    return lines


def task_lines(folder: Path) -> list[str]:
    name = folder.name
    rows = []
    metrics = folder / "online" / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    lines = [f"### {name}"]
    if rows:
        last = rows[-1]
        lines.append(
            f"{len(rows)} epochs, {last.get('online/updates', '?')} updates, {last.get('online/env_steps', '?')} "
            f"environment steps in {sum(r.get('time/epoch_s', 0) for r in rows):.0f} s of epochs."
        )
    else:
        lines.append("No epoch finished in the window.")
    result = folder / "eval.json"
    if result.is_file():
        e = json.loads(result.read_text())
        lines.append(
            f"Held-out (seeds {e['seed']}+, {int(e['eval/episodes'])} episodes): success {e['eval/success']:.1%} "
            f"(SE {e['eval/success_se']:.1%}), valid {e['eval/valid']:.1%}, return {e['eval/return']:.2f}."
        )
    else:
        lines.append("Not scored (no checkpoint, or the window ended first).")
    return lines


def main() -> None:
    out = Path(sys.argv[1])
    lines = ["# gpu_paper.sh report", "", "## Throughput", "", *bench_lines(out / "bench.json"), "", "## Learning", ""]
    for task in ("numberline", "blackjack"):
        lines += [*task_lines(out / task), ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()

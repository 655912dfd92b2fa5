"""The summary table of scripts/gpu_check.sh: each GPU target, what the run measured, and whether
it is met. Reads RESULTS/{gpu_tests,ops,graphs,throughput,foreign_sampler,convergence_summary}_TAG.* and writes
RESULTS/gpu_check_TAG.md.

    python scripts/gpu_summary.py benchmarks/results cuda
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def tests_row(results: Path, tag: str) -> list[str]:
    path = results / f"gpu_tests_{tag}.xml"
    if not path.is_file():
        return ["CUDA tests", "no report", "all pass", "missing"]
    suite = ET.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    total, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
    skipped = int(suite.get("skipped"))
    return ["CUDA tests", f"{total - failed - skipped} passed, {failed} failed, {skipped} skipped", "all pass",
            "met" if failed == 0 else "NOT MET"]


def copy_share(ops: dict | None, op: str) -> tuple[float, str] | None:
    """Best GPU backend's GB/s over the copy bandwidth of the same case, and that backend."""
    if ops is None:
        return None
    rows = {}
    for bench in ops["benchmarks"]:
        info, params = bench["extra_info"], bench["params"]
        if not str(params.get("device", "")).startswith("cuda") and "cuda" not in bench["param"]:
            continue
        rows[(info["op"], params.get("backend", "torch"))] = info["bytes"] / bench["stats"]["mean"]
    copy = rows.get(("copy", "torch"))
    candidates = [(gbs / copy, backend) for (name, backend), gbs in rows.items() if name == op and backend != "torch"] if copy else []
    return max(candidates) if candidates else None


def verdict(value, ok) -> str:
    return "not measured" if value is None else ("met" if ok(value) else "NOT MET")


def main() -> None:
    results, tag = Path(sys.argv[1]), sys.argv[2]
    ops, graphs, throughput, foreign, convergence = (load(results / f"{name}_{tag}.json") for name in
                                                     ("ops", "graphs", "throughput", "foreign_sampler", "convergence_summary"))
    rows = [tests_row(results, tag)]
    for op, target in (("prune_select", 0.8), ("compact_", 0.7)):
        share = copy_share(ops, op)
        rows.append([f"{op} bandwidth (SD3.5-M shape)", "-" if share is None else f"{share[0]:.0%} of copy ({share[1]})",
                     f">= {target:.0%} of copy", verdict(share, lambda s, t=target: s[0] >= t)])
    by_model = {r["model"]: r for r in (graphs or {}).get("rows", [])}
    shapes, big = by_model.get("shapes"), by_model.get("sd35m")
    speedup = shapes and shapes.get("graph_speedup")
    speedup = speedup if isinstance(speedup, float) else None
    rows.append(["graph vs eager sampling, shapes model", "-" if speedup is None else f"{speedup:.2f}x", ">= 1.5x",
                 verdict(speedup, lambda s: s >= 1.5)])
    share = big and big.get("prune_fraction")
    rows.append(["pruning share of a sampling call, SD3.5-M, latent proxy", "-" if share is None else f"{share:.2%}", "<= 1%",
                 verdict(share, lambda s: s <= 0.01)])
    ratio = big and big.get("speedup_over_ideal")
    rows.append(["sampling speed-up / ideal trajectory-step ratio, SD3.5-M", "-" if ratio is None else
                 f"{ratio:.3f} ({big['pruned_speedup']:.2f}x of {big['ideal_speedup']:.2f}x)", ">= 0.95",
                 verdict(ratio, lambda r: r >= 0.95)])
    timed = (throughput or {}).get("rows", [])
    naive = next((row["method"] for row in timed
                  if row["time_vs_first_naive"] == 1.0 and row["proxy"] is None and not row["static_ovf"]), None)
    for row in timed:
        if row["method"] != naive:
            rows.append([f"iteration time {row['method']} / {naive}",
                         f"{row['time_vs_first_naive']:.3f} ({row['time_vs_first_naive_range']})",
                         "<= 0.74 (reward proxy)" if row["method"] == "pro-grpo-reward" else "-",
                         verdict(row["time_vs_first_naive"], lambda r: r <= 0.74) if row["method"] == "pro-grpo-reward" else "-"])
    for row in (foreign or {}).get("rows", []):
        rows.append([f"StepPruner calls' share of a Flow-GRPO-shaped loop ({row['schedule']}, {row['proxy']} proxy)",
                     f"{row['pruner_share']:.2%} (pruned loop {row['pruned_vs_naive_gmax']:.2f}x of unpruned G_max)", "<= 1%",
                     verdict(row["pruner_share"], lambda s: s <= 0.01)])
    converged = (convergence or {}).get("rows", [])
    for row in converged[1:]:  # the first row is the reference
        rows.append([f"convergence speed-up over {converged[0]['method']}, shapes task, {row['method']} ({row['seeds']} seeds)",
                     f"to 50% of its gain {row['speedup_50_text']}, to 90% {row['speedup_90_text']}", "-", "-"])
    if throughput is not None:  # the throughput table as Markdown beside its JSON
        from progrpo_fast.bench.results import markdown_table
        from progrpo_fast.bench.throughput import COLUMNS

        (results / f"throughput_{tag}.md").write_text(markdown_table(throughput["rows"], COLUMNS) + "\n")
    device = next((d["machine"]["device"] for d in (graphs, throughput) if d), "?")
    title = f"GPU check ({tag}) on {device}"
    if tag == "dryrun":  # toy sizes on a CPU: the stages ran, the numbers decide nothing
        rows = [row[:3] + (["-"] if row[0] != "CUDA tests" else row[3:]) for row in rows]
        title += " (dry run: toy sizes, no verdicts)"
    lines = [title, "", "| check | measured | target | verdict |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    (results / f"gpu_check_{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Markdown table from a pytest-benchmark JSON of benchmarks/test_bench_ops.py.

    python benchmarks/report_ops.py benchmarks/results/ops_cpu.json [--peak-gbs 3350]

Achieved GB/s = bytes the op must move / mean time; with --peak-gbs also the % of peak.
Speed-up = reference (torch backend) mean time / this backend's mean time, same op and case.
"""
import argparse
import json
import re


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("json_file")
    parser.add_argument("--peak-gbs", type=float, default=None, help="device peak memory bandwidth in GB/s")
    args = parser.parse_args()
    data = json.load(open(args.json_file))
    rows = {}
    for bench in data["benchmarks"]:
        backend = bench["params"]["backend"]
        case = re.sub(r"^[^-]*-", "", bench["param"]) if "-" in bench["param"] else bench["param"]
        key = (bench["extra_info"]["op"], case)
        rows.setdefault(key, {})[backend] = (bench["stats"]["mean"], bench["extra_info"]["bytes"])
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, python {machine.get('python_version', '?')}\n")
    peak = " | % of peak" if args.peak_gbs else ""
    print(f"| op | case | backend | mean (ms) | GB/s{peak} | speed-up vs torch |")
    print("|---|---|---|---:|---:|" + ("---:|" if args.peak_gbs else "") + "---:|")
    for (op, case), by_backend in sorted(rows.items()):
        reference = by_backend.get("torch", (None,))[0]
        for backend, (mean, nbytes) in sorted(by_backend.items()):
            gbs = nbytes / mean / 1e9
            pct = f" | {100 * gbs / args.peak_gbs:.0f}%" if args.peak_gbs else ""
            speedup = f"{reference / mean:.1f}x" if reference else "-"
            print(f"| {op} | {case} | {backend} | {mean * 1e3:.3f} | {gbs:.1f}{pct} | {speedup} |")


if __name__ == "__main__":
    main()

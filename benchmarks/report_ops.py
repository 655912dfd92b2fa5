"""Markdown table from a pytest-benchmark JSON of benchmarks/test_bench_ops.py.

    python benchmarks/report_ops.py benchmarks/results/ops_cpu.json [--peak-gbs 3350]

Achieved GB/s = bytes the op must move / mean time; "% of copy" = its share of the measured copy
bandwidth of the same case (the ``copy`` rows); with --peak-gbs also the % of a stated peak.
Speed-up = reference (torch backend) mean time / this backend's mean time, same op and case.
"""
import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("json_file")
    parser.add_argument("--peak-gbs", type=float, default=None, help="device peak memory bandwidth in GB/s")
    args = parser.parse_args()
    data = json.load(open(args.json_file))
    rows = {}
    for bench in data["benchmarks"]:
        backend = bench["params"].get("backend", "torch")
        case = bench["param"][len(backend) + 1 :] if "backend" in bench["params"] else bench["param"]
        key = (bench["extra_info"]["op"], case)
        rows.setdefault(key, {})[backend] = (bench["stats"]["mean"], bench["extra_info"]["bytes"])
    machine = data.get("machine_info", {})
    gpus = sorted({b["extra_info"]["gpu"] for b in data["benchmarks"] if b["extra_info"].get("gpu")})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}{''.join(', ' + g for g in gpus)}, "
          f"python {machine.get('python_version', '?')}\n")
    copy_gbs = {case: nbytes / mean / 1e9
                for (op, case), by_backend in rows.items() if op == "copy" for mean, nbytes in by_backend.values()}
    peak = " | % of peak" if args.peak_gbs else ""
    print(f"| op | case | backend | mean (ms) | GB/s | % of copy{peak} | speed-up vs torch |")
    print("|---|---|---|---:|---:|---:|" + ("---:|" if args.peak_gbs else "") + "---:|")
    for (op, case), by_backend in sorted(rows.items()):
        reference = by_backend.get("torch", (None,))[0]
        for backend, (mean, nbytes) in sorted(by_backend.items()):
            gbs = nbytes / mean / 1e9
            of_copy = f"{100 * gbs / copy_gbs[case]:.0f}%" if case in copy_gbs else "-"
            pct = f" | {100 * gbs / args.peak_gbs:.0f}%" if args.peak_gbs else ""
            speedup = f"{reference / mean:.1f}x" if reference else "-"
            print(f"| {op} | {case} | {backend} | {mean * 1e3:.3f} | {gbs:.1f} | {of_copy}{pct} | {speedup} |")


if __name__ == "__main__":
    main()

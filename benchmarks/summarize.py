"""Turn a pytest-benchmark JSON file into a markdown table: median time, samples/s, speed-up.

    python benchmarks/summarize.py benchmarks/results/cpu_smpl.json [--baseline smplx]
"""
import argparse
import json
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("json_file")
    parser.add_argument("--baseline", default="smplx", help="impl the speed-up is measured against")
    args = parser.parse_args()
    with open(args.json_file) as f:
        report = json.load(f)
    rows = defaultdict(dict)
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        rows[(info["mode"], info["batch"])][info["impl"]] = bench["stats"]["median"]
    impls = sorted({impl for row in rows.values() for impl in row}, key=lambda i: (i != args.baseline, i))
    print(f"machine: {report['machine_info'].get('cpu', {}).get('brand_raw', '?')}; "
          f"{report['datetime']}")
    print("| mode | B | " + " | ".join(f"{i} median (samples/s)" for i in impls) + " | speed-up vs " + args.baseline + " |")
    print("|---|---:|" + "---:|" * len(impls) + "---|")
    for (mode, batch), times in sorted(rows.items()):
        cells = [f"{times[i] * 1e3:.3f} ms ({batch / times[i]:,.0f})" if i in times else "-" for i in impls]
        base = times.get(args.baseline)
        ups = ", ".join(f"{i} {base / times[i]:.2f}x" for i in impls if i != args.baseline and i in times and base)
        print(f"| {mode} | {batch} | " + " | ".join(cells) + f" | {ups} |")


if __name__ == "__main__":
    main()

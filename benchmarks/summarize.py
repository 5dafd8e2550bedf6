"""Turn a pytest-benchmark JSON file into a markdown table: median time, samples/s, speed-ups.

    python benchmarks/summarize.py benchmarks/results/cpu_smpl_peers.json [--baseline smplx] [--ours reference]

Each row gives every implementation's median, the speed-up of each over the baseline, and
ours against the best (fastest) peer, i.e. the best implementation not named `ours*`. A test
that measures several implementations itself (interleaved call by call) gives their medians
in extra_info["medians"].
"""
import argparse
import json
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("json_file")
    parser.add_argument("--baseline", default="smplx", help="impl the speed-up is measured against")
    parser.add_argument("--ours", default="reference", help="prefix of our impls (not peers)")
    args = parser.parse_args()
    with open(args.json_file) as f:
        report = json.load(f)
    rows = defaultdict(dict)
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        mode = info["mode"] + (" (loaded, %d threads)" % info.get("threads", 2) if info.get("loaded") else "")
        if "medians" in info:  # several implementations measured in one test, call by call
            rows[(mode, info["batch"])].update(info["medians"])
        else:
            rows[(mode, info["batch"])][info["impl"]] = bench["stats"]["median"]
    # "floor-*" entries are not body models (e.g. the corrective GEMM alone): a column of
    # their own, ours against them, never a peer or a speed-up.
    floors = sorted({impl for row in rows.values() for impl in row if impl.startswith("floor")})
    impls = sorted({impl for row in rows.values() for impl in row if not impl.startswith("floor")},
                   key=lambda i: (i.startswith(args.ours), i != args.baseline, i))
    print(f"machine: {report['machine_info'].get('cpu', {}).get('brand_raw', '?')}; "
          f"{report['datetime']}")
    print("| mode | B | " + " | ".join(f"{i} median (samples/s)" for i in impls)
          + f" | speed-up vs {args.baseline} | {args.ours} vs best peer |"
          + "".join(f" {f} median | {args.ours} time / {f} |" for f in floors))
    print("|---|---:|" + "---:|" * len(impls) + "---|---|" + "---:|---|" * len(floors))
    for (mode, batch), all_times in sorted(rows.items()):
        times = {i: t for i, t in all_times.items() if not i.startswith("floor")}
        cells = [f"{times[i] * 1e3:.3f} ms ({batch / times[i]:,.0f})" if i in times else "-" for i in impls]
        base = times.get(args.baseline)
        ups = ", ".join(f"{i} {base / times[i]:.2f}x" for i in impls if i != args.baseline and i in times and base) or "-"
        peers = {i: t for i, t in times.items() if not i.startswith(args.ours)}
        ours = {i: t for i, t in times.items() if i.startswith(args.ours) and not i.endswith("hmr19")}
        if peers and ours:
            best = min(peers, key=peers.get)
            vs = ", ".join(f"{i} {peers[best] / t:.2f}x" for i, t in sorted(ours.items())) + f" (best peer: {best})"
        else:
            vs = "-"
        floor_cells = ""
        for f in floors:
            if f in all_times:
                ratio = ", ".join(f"{i} {t / all_times[f]:.2f}x" for i, t in sorted(ours.items()))
                floor_cells += f" {all_times[f] * 1e3:.3f} ms | {ratio} |"
            else:
                floor_cells += " - | - |"
        print(f"| {mode} | {batch} | " + " | ".join(cells) + f" | {ups} | {vs} |" + floor_cells)


if __name__ == "__main__":
    main()

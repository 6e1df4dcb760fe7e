"""Rebuild benchmarks/RESULTS.md from the latest tables in benchmarks/results/ (each names its date, commit, machine
and command) plus the hand-written findings in benchmarks/results/NOTES.md.

    python benchmarks/collect.py
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORDER = ["quality_cpu_chunks.md", "quality_cpu_conv2.md", "quality_cpu_infonce.md", "quality_cpu_code.md", "quality_cpu.md", "quality_cpu_long.md",
         "quality_cpu_conv.md",
         "quality_paper.md", "quality_paper_gpu_short.md", "quality_cpu_grouped.md", "speed.md", "speed_beauty.md",
         "speed_gpu_beauty.md", "speed_ray.md", "speed_compile.md", "speed_compile_code.md",
         "quality_cpu_compile_probe.md", "speed_gpu.md", "speed_gpu_b2048.md", "speed_before_17d88e1.md",
         "tokenizer_beauty.md"]  # any other table (a new --tag) follows these, by name


def main() -> int:
    parts = ["# Benchmark results", "",
             "The latest table of each benchmark (`benchmarks/README.md` says how to run them). Every table carries "
             "the date, the commit, the machine and the exact command that produced it; CSV twins are in "
             "`benchmarks/results/`.", ""]
    notes = RESULTS / "NOTES.md"
    if notes.exists():
        parts += [notes.read_text().strip(), ""]
    found = [RESULTS / name for name in ORDER if (RESULTS / name).exists()]
    found += sorted(p for p in RESULTS.glob("*.md") if p.name not in ORDER and p.name != "NOTES.md")
    if not found:
        print(f"no result tables in {RESULTS}; run the benchmarks first", file=sys.stderr)
        return 2
    for path in found:
        text = path.read_text().strip().splitlines()
        if text and text[0].startswith("# "):
            text[0] = "#" + text[0]  # one level down under this page's title
        parts += text + [""]
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'RESULTS.md'} from {', '.join(p.name for p in found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

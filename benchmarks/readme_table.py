"""Re-run the README's speed table and print the old and new values side by side.

The table sits in README.md between ``<!-- speed-table -->`` and ``<!-- /speed-table -->``: a
"Measured:" line (date, machine, load) and one row per figure with the exact command that measures
it. This script runs every distinct command once (in row order), reads the figures of each row out
of the command's output, and prints, under the old and the new machine/date header, each row's
old and new ratio with minigpt's and PyTorch's figures (and the new ratio's spread and flag).

    python benchmarks/readme_table.py                   # re-run, print old vs new
    python benchmarks/readme_table.py --write           # ... and put the new values in README.md
    python benchmarks/readme_table.py --dry-run         # only list the rows and their commands

``minigpt`` in a command is run as ``<this python> -m minigpt.cli``; the PyTorch side is the plain
PyTorch child of ``minigpt bench`` (set ``MINIGPT_BENCH_TORCH_PYTHON`` to a venv with torch if this
one has none).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- speed-table -->", "<!-- /speed-table -->"
NUM = r"(\d+(?:\.\d+)?)"


# --- the README side ---------------------------------------------------------------------------------
def table_block(readme: str) -> tuple[int, int]:
    """Character span of the text between the two markers."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md has no speed table: add the markers {BEGIN} and {END}")
    start = readme.index(BEGIN) + len(BEGIN)
    return start, readme.index(END, start)


def row_key(label: str) -> tuple[str, str, str]:
    """'training step, small, 2 threads' -> ("train", "small", "") ; 'peak memory, decode, GPT-2
    124M' -> ("memory", "gpt2", "decode"). Section from the words, config from 'small'/'GPT-2'/
    'long' ('long' first: its label may say "GPT-2's vocabulary")."""
    low = label.lower()
    config = ("long" if re.search(r"\blong\b", low) else "gpt2" if ("gpt-2" in low or "124m" in low)
              else "small" if "small" in low
              else "tiny" if "tiny" in low else "")             # tiny: smoke runs of this script
    if not config:
        raise ValueError(f"speed table row {label!r}: name the config ('small', 'GPT-2 124M' or "
                         "'long')")
    if "memory" in low:
        task = "decode" if "decode" in low else "train"
        return "memory", config, task
    if "decode" in low:
        return "decode", config, ""
    if "training" in low or "train" in low:
        return "train", config, ""
    raise ValueError(f"speed table row {label!r}: say 'training step', 'decode' or 'peak memory'")


def _cell_number(cell: str) -> float | None:
    m = re.search(NUM, cell.replace(",", ""))
    return float(m.group(1)) if m and "-" != cell.strip() else None


def parse_table(readme: str) -> dict:
    """-> {"measured": header line text, "rows": [{"label", "key", "ratio", "minigpt", "torch",
    "command", "line"}]} from the README's speed table."""
    start, end = table_block(readme)
    block = readme[start:end]
    measured = next((ln.strip() for ln in block.splitlines() if ln.strip().startswith("Measured")),
                    None)
    if measured is None:
        raise ValueError("the speed table needs a 'Measured: <date>, <machine>, load ...' line")
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.strip().startswith("|") or len(cells) != 5 or set(cells[0]) <= set("-: "):
            continue
        if cells[0].lower() in ("measurement", ""):
            continue
        cmd = re.search(r"`([^`]+)`", cells[4])
        if cmd is None:
            raise ValueError(f"speed table row {cells[0]!r}: its command must be in backquotes")
        rows.append({"label": cells[0], "key": row_key(cells[0]), "ratio": _cell_number(cells[1]),
                     "minigpt": _cell_number(cells[2]), "torch": _cell_number(cells[3]),
                     "command": cmd.group(1), "line": line})
    if not rows:
        raise ValueError("the speed table has no rows")
    return {"measured": measured, "rows": rows}


# --- the bench side ----------------------------------------------------------------------------------
CONFIG_NAMES = "tiny|small|gpt2|long"                   # the bench's configs (configs.py)
TRAIN_OR_DECODE = re.compile(rf"^\s+({CONFIG_NAMES})\s+\d+\s+{NUM} \[{NUM}\.\.{NUM}\]\s+{NUM} "
                             rf"\[{NUM}\.\.{NUM}\]\s+{NUM} \[{NUM}\.\.{NUM}\] (!?)")
MEMORY = re.compile(rf"^\s+({CONFIG_NAMES})\s+(train|decode)\s+{NUM} \[{NUM}\]\s+{NUM} \[{NUM}\]"
                    rf"\s+{NUM}")


def parse_bench(output: str) -> dict:
    """``minigpt bench`` output -> {(section, config, task): {"ratio", "minigpt", "torch", ...}}."""
    found: dict = {}
    section = None
    for line in output.splitlines():
        if line.startswith("Training step"):
            section = "train"
        elif line.startswith("KV-cached greedy decode"):
            section = "decode"
        elif line.startswith("Peak memory"):
            section = "memory"
        elif line and not line.startswith(" "):
            section = None
        m = TRAIN_OR_DECODE.match(line) if section in ("train", "decode") else None
        if m:
            g = m.groups()
            found[(section, g[0], "")] = {
                "minigpt": float(g[1]), "torch": float(g[4]), "ratio": float(g[7]),
                "ratio_range": (float(g[8]), float(g[9])), "flagged": g[10] == "!",
                "minigpt_range": (float(g[2]), float(g[3])), "torch_range": (float(g[5]), float(g[6]))}
        m = MEMORY.match(line) if section == "memory" else None
        if m:
            g = m.groups()
            found[("memory", g[0], g[1])] = {"minigpt": float(g[2]), "torch": float(g[4]),
                                             "ratio": float(g[6])}
    return found


def header_of(output: str) -> str:
    """'2026-12-02 15:40 UTC, AMD EPYC; 2 logical CPUs, 2 usable; load average 0.9 ...'."""
    first = output.splitlines()[0] if output else ""
    date = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", first)
    cpu = next((ln.split("CPU", 1)[1].strip() for ln in output.splitlines()
                if ln.strip().startswith("CPU ")), "unknown CPU")
    return f"{date.group(0) if date else '?'}, {cpu}"


def run_command(command: str) -> str:
    args = shlex.split(command)
    if args[0] != "minigpt":
        raise ValueError(f"speed table command {command!r} must start with 'minigpt'")
    proc = subprocess.run([sys.executable, "-m", "minigpt.cli", *args[1:]], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


# --- old vs new --------------------------------------------------------------------------------------
def _fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def new_line(row: dict, new: dict) -> str:
    """The README row with the new values (ratio in bold, spread and flag for timings)."""
    ratio = f"**{new['ratio']:.2f}**"
    if "ratio_range" in new:
        lo, hi = new["ratio_range"]
        ratio += f" [{lo:.2f}..{hi:.2f}]" + (" (not established)" if new["flagged"] else "")
    return (f"| {row['label']} | {ratio} | {new['minigpt']:.0f} | {new['torch']:.0f} | "
            f"`{row['command']}` |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--dry-run", action="store_true", help="list the rows and commands only")
    ap.add_argument("--write", action="store_true",
                    help="write the new values and the new 'Measured:' line into the README")
    args = ap.parse_args()
    readme = Path(args.readme).read_text("utf-8")
    table = parse_table(readme)
    commands = list(dict.fromkeys(r["command"] for r in table["rows"]))
    if args.dry_run:
        for r in table["rows"]:
            print(f"{r['label']:55s} {r['key']}  `{r['command']}`")
        return 0
    outputs, headers = {}, []
    for cmd in commands:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"running `{cmd}` (load average {load}) ...", flush=True)
        outputs[cmd] = run_command(cmd)
        headers.append(header_of(outputs[cmd]))
    print()
    print(f"old: {table['measured']}")
    print(f"new: {headers[0]} (first command) ... {headers[-1]} (last); "
          f"{platform.node() or 'this machine'}, Python {platform.python_version()}")
    print(f"  {'row':58s} {'old ratio (mg vs pt)':>24s}   {'new ratio [spread] (mg vs pt)':>36s}")
    text = readme
    for r in table["rows"]:
        new = parse_bench(outputs[r["command"]]).get(r["key"])
        old = f"{_fmt(r['ratio'], 2)} ({_fmt(r['minigpt'])} vs {_fmt(r['torch'])})"
        if new is None:
            print(f"  {r['label']:58s} {old:>24s}   {'not in the output':>36s}")
            continue
        spread = ""
        if "ratio_range" in new:
            spread = f" [{new['ratio_range'][0]:.2f}..{new['ratio_range'][1]:.2f}]" + \
                     ("!" if new["flagged"] else " ")
        cell = f"{new['ratio']:.2f}{spread} ({new['minigpt']:.0f} vs {new['torch']:.0f})"
        print(f"  {r['label']:58s} {old:>24s}   {cell:>36s}")
        text = text.replace(r["line"], new_line(r, new), 1)
    print("  ! = the ratio's spread over the processes is wider than its distance from 1")
    if args.write:
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        text = text.replace(table["measured"], f"Measured: {date} (finished), first command "
                            f"{headers[0]}", 1)
        Path(args.readme).write_text(text, "utf-8")
        print(f"wrote the new values into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

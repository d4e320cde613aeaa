"""``benchmarks/readme_table.py`` finds every row of the README's speed table with its command, and
reads the same figures back out of what ``minigpt bench`` prints (the real printer, fed fake results,
so no process is started)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from minigpt.cli.bench import spread

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
readme_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_table)


def test_the_real_readme_table_parses():
    table = readme_table.parse_table((ROOT / "README.md").read_text("utf-8"))
    assert table["measured"].startswith("Measured")
    keys = {r["key"] for r in table["rows"]}
    for section in ("train", "decode"):
        for config in ("small", "gpt2"):
            assert (section, config, "") in keys
    assert {("memory", c, t) for c in ("small", "gpt2") for t in ("train", "decode")} <= keys
    assert ("train", "long", "") in keys                  # T = 1024, its own command (not 'all')
    for r in table["rows"]:
        assert r["command"].startswith("minigpt bench ")
        threads = " 1 thread" if "--threads 1" in r["command"] else " 2 threads"
        assert r["key"][0] == "memory" or threads in r["label"], r["label"]


def test_parse_table_refuses_what_it_cannot_read():
    good = (ROOT / "README.md").read_text("utf-8")
    with pytest.raises(ValueError, match="no speed table"):
        readme_table.parse_table(good.replace(readme_table.BEGIN, ""))
    with pytest.raises(ValueError, match="backquotes"):
        readme_table.parse_table(good.replace("| `minigpt bench --config all --only memory",
                                              "| minigpt bench --config all --only memory", 1))
    with pytest.raises(ValueError, match="name the config"):
        readme_table.row_key("training step, medium, 2 threads")
    assert readme_table.row_key("peak memory, decode, GPT-2 124M") == ("memory", "gpt2", "decode")
    assert readme_table.row_key("training step, long (GPT-2's vocabulary, T = 1024), 2 threads") \
        == ("train", "long", "")                          # 'long' wins over the 'GPT-2' it names


def _fake_results(monkeypatch):
    from minigpt.cli.bench import isolated, memory

    def side(rates, mb):
        s = spread.side(rates)
        s.update(median_s=2048 / s["tok_s"], peak_mb=mb, mfu=0.5)
        return s

    def train_step(name, steps, threads, with_torch=True, rounds=5):
        mg, pt = side([6000.0, 6100.0, 6200.0], 450.0), side([5000.0, 5400.0, 8000.0], 680.0)
        return {"config": name, "tokens": 2048, "isolated": True, "rounds": 3, "gemm_gflops": 200.0,
                "minigpt": mg, "torch": pt, "first_loss": (8.3, 8.3), **spread.ratio(mg, pt)}

    def decode(name, n_new, repeats, threads, with_torch=True, rounds=5):
        mg, pt = side([150.0, 152.0, 155.0], 160.0), side([100.0, 101.0, 103.0], 300.0)
        return {"config": name, "n_new": 64, "isolated": True, "rounds": 3, "minigpt": mg,
                "torch": pt, "same_tokens": 64, **spread.ratio(mg, pt)}

    def measure(impl, task, name, threads, n_new=32):
        return {"base_mb": 100.0, "peak_mb": 450.0 if impl == "minigpt" else 900.0}

    monkeypatch.setattr(isolated, "train_step", train_step)
    monkeypatch.setattr(isolated, "decode", decode)
    monkeypatch.setattr(isolated, "torch_info", lambda: {"torch": "2.13.0"})
    monkeypatch.setattr(memory, "measure", measure)


def test_parse_bench_reads_what_the_bench_prints(monkeypatch, restore_global_settings):
    from minigpt.cli.bench import report

    _fake_results(monkeypatch)
    lines: list[str] = []
    report.run(["small"], 3, 1, 64, {"train", "decode", "memory"}, print_fn=lines.append)
    found = readme_table.parse_bench("\n".join(lines))
    train = found[("train", "small", "")]
    assert train["minigpt"] == 6100 and train["torch"] == 5400
    assert train["ratio"] == pytest.approx(6100 / 5400, abs=0.005)
    assert train["ratio_range"] == pytest.approx((6000 / 8000, 6200 / 5000), abs=0.005)
    assert train["flagged"]                               # 0.49 wide, 0.13 from 1
    dec = found[("decode", "small", "")]
    assert dec["ratio"] == pytest.approx(152 / 101, abs=0.005) and not dec["flagged"]
    assert found[("memory", "small", "train")]["ratio"] == pytest.approx(0.5)
    assert found[("memory", "small", "decode")]["torch"] == 900
    assert "CPU" in readme_table.header_of("\n".join(lines))


def test_a_written_row_parses_back():
    """--write puts new values in the README; the next run must read them as the old values."""
    text = (ROOT / "README.md").read_text("utf-8")
    row = readme_table.parse_table(text)["rows"][0]
    new = {"ratio": 1.234, "minigpt": 6100.0, "torch": 4943.0, "ratio_range": (0.9, 1.5),
           "flagged": True}
    again = readme_table.parse_table(text.replace(row["line"], readme_table.new_line(row, new), 1))
    first = again["rows"][0]
    assert (first["ratio"], first["minigpt"], first["torch"]) == (1.23, 6100, 4943)
    assert first["command"] == row["command"] and first["key"] == row["key"]


def test_the_long_row_is_read_from_its_own_run_and_filled(monkeypatch, restore_global_settings):
    """The README's 'long' row: a row with no figures yet (as it was added) parses as empty, the
    bench's 'long' line is read back under its key, and the written row parses with the new
    values."""
    from minigpt.cli.bench import report

    text = (ROOT / "README.md").read_text("utf-8")
    row = next(r for r in readme_table.parse_table(text)["rows"] if r["key"][1] == "long")
    assert row["command"] == "minigpt bench --config long --only train --threads 2"
    label = row["line"].split("|")[1].strip()
    empty = f"| {label} | not measured yet | - | - | `{row['command']}` |"
    text = text.replace(row["line"], empty, 1)
    row = next(r for r in readme_table.parse_table(text)["rows"] if r["key"][1] == "long")
    assert (row["ratio"], row["minigpt"], row["torch"]) == (None, None, None)
    _fake_results(monkeypatch)
    lines: list[str] = []
    report.run(["long"], 3, 2, 64, {"train"}, print_fn=lines.append)
    new = readme_table.parse_bench("\n".join(lines))[row["key"]]
    assert (new["minigpt"], new["torch"]) == (6100, 5400)
    again = readme_table.parse_table(text.replace(row["line"], readme_table.new_line(row, new), 1))
    long = next(r for r in again["rows"] if r["key"] == row["key"])
    assert (long["minigpt"], long["torch"], long["ratio"]) == (6100, 5400, round(6100 / 5400, 2))

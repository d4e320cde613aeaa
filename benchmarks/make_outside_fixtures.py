"""Freeze expected values computed OUTSIDE minigpt into tests/fixtures/outside/ (issue 10, item 4).

    python benchmarks/make_outside_fixtures.py all          # or one of: hashes lines train model

Run it in a separate virtualenv that has the outside libraries (never a minigpt dependency):

    python3 -m venv .peer
    .peer/bin/pip install torch==2.13.0 transformers tiktoken numpy safetensors regex
    .peer/bin/python benchmarks/make_outside_fixtures.py all

The script does not import minigpt: every expected value below comes from elsewhere. The test suite
(tests/test_outside_fixtures.py) reads the files with only numpy and minigpt. Each subcommand
refuses (exit status 2, with what to install) when its outside library is missing.

hashes  vocab_sha256.json: the sha256 of GPT-2's vocabulary files (encoder.json, vocab.bpe,
        gpt2.tiktoken) as three outside sources give them, required to agree: the table in
        /work/shared/data/gpt2/README.md, the files in /work/shared/data/gpt2/ hashed here, and the
        hashes tiktoken pins in tiktoken_ext/openai_public.py (read from its source text).
lines   tiktoken_lines.json: tiktoken's gpt2 ids (built offline from the .tiktoken rank file in
        /work/shared/data/gpt2/ with tiktoken's own r50k pattern) for a few thousand seeded lines
        (texts on this machine + generated scripts, emoji, code, whitespace, contractions, digits,
        special-token text), line by line and for a few multi-line chunks; for the lines holding
        <|endoftext|> also encode(allowed_special={"<|endoftext|>"}).
train   edu_bpe_train_verdict_1000.json: the tokens of tiktoken._educational.bpe_train on
        the-verdict.txt (read with newline="") at vocab_size 1000, in rank order, for the pattern of
        tiktoken's own educational gpt2 example and for tiktoken's r50k pattern.
model   gpt_train_untied_T33.safetensors: the book's training model (untied LM head, no qkv bias)
        in PyTorch float64 - logits, mean cross-entropy (three targets -100) and every parameter's
        gradient - for seeded weights, 2 x 33 tokens, context_length 40. Written as a small
        PyTorch module with the book's structure (separate W_query/W_key/W_value without bias,
        out_head without bias) and cross-checked here against transformers' GPT2LMHeadModel
        (tie_word_embeddings=False, c_attn.bias zero and frozen). Dropout is off (drop 0.0, eval
        mode): it draws random numbers, which no two libraries share.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "outside"
SHARED = Path("/work/shared/data")
SHARED_GPT2 = SHARED / "gpt2"
VERDICT = ROOT / "minigpt" / "assets" / "texts" / "the-verdict.txt"
INSTRUCTIONS = ROOT / "minigpt" / "assets" / "texts" / "instruction-data.json"
SMS = SHARED / "sms-spam-collection" / "SMSSpamCollection"
SMS_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"  # shared README
VOCAB_FILES = ("encoder.json", "vocab.bpe", "gpt2.tiktoken")
EOT = "<|endoftext|>"


def refuse(message: str) -> None:
    """Stop without writing anything: exit status 2 and the reason on stderr."""
    print(f"refused: {message}", file=sys.stderr)
    sys.exit(2)


def need(module: str, what: str):
    """Import ``module`` or refuse, saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        refuse(f"'{what}' needs {module} ({e}). Install the outside libraries in a separate venv: "
               "pip install torch==2.13.0 transformers tiktoken numpy safetensors regex (see this "
               "script's docstring)")


def sha256(path: Path) -> str:
    if not path.is_file():
        refuse(f"{path} is missing (the outside copies live in {SHARED}; see its README.md)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, header: dict, rows: dict[str, list]) -> None:
    """JSON with the header first and one row per line (diffable, small)."""
    parts = ["{" + json.dumps("_header") + ": " + json.dumps(header, indent=1)]
    for key, items in rows.items():
        body = ",\n  ".join(json.dumps(x, ensure_ascii=True, separators=(",", ":")) for x in items)
        parts.append(f"{json.dumps(key)}: [\n  {body}\n ]")
    path.write_text(",\n ".join(parts) + "}\n", encoding="ascii")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")


# ---------------------------------------------------------------------------------- (a) hashes
def make_hashes() -> None:
    tiktoken = need("tiktoken", "hashes")
    public = need("tiktoken_ext.openai_public", "hashes")
    # 1. the table in shared/data/gpt2/README.md: | `file` | bytes | `sha256` | format |
    sha256(SHARED_GPT2 / "README.md")                                    # refuses if missing
    readme = (SHARED_GPT2 / "README.md").read_text(encoding="utf-8")
    row = r"^\| `([^`]+)` \| [\d,]+ \| `([0-9a-f]{64})` \|"
    table = dict(re.findall(row, readme, re.M))
    # 2. tiktoken's pins: gpt2() gives encoder_json_hash, vocab_bpe_hash; r50k_base() expected_hash
    src_gpt2, src_r50k = inspect.getsource(public.gpt2), inspect.getsource(public.r50k_base)
    pins = {"encoder.json": re.search(r'encoder_json_hash="([0-9a-f]{64})"', src_gpt2)[1],
            "vocab.bpe": re.search(r'vocab_bpe_hash="([0-9a-f]{64})"', src_gpt2)[1],
            "gpt2.tiktoken": re.search(r'expected_hash="([0-9a-f]{64})"', src_r50k)[1]}
    files = {}
    for name in VOCAB_FILES:
        found = {"shared README": table.get(name), "shared file": sha256(SHARED_GPT2 / name),
                 "tiktoken pin": pins[name]}
        if len(set(found.values())) != 1:
            refuse(f"the outside sources disagree on {name}: {found}")
        path = SHARED_GPT2 / name
        files[name] = {"sha256": found["tiktoken pin"], "bytes": path.stat().st_size}
        print(f"  {name}: {found['tiktoken pin']} ({path.stat().st_size:,} bytes), 3 sources agree")
    doc = {
        "_header": ("sha256 of GPT-2's vocabulary files, from outside minigpt: the table in "
                    "/work/shared/data/gpt2/README.md, the files in /work/shared/data/gpt2/ hashed "
                    f"by the script, and tiktoken {tiktoken.__version__}'s pins in "
                    "tiktoken_ext/openai_public.py (gpt2: encoder_json_hash, vocab_bpe_hash; "
                    "r50k_base: expected_hash), all three equal. Written by "
                    "benchmarks/make_outside_fixtures.py hashes."),
        "files": files,
    }
    path = OUT / "vocab_sha256.json"
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="ascii")
    print(f"wrote {path.relative_to(ROOT)}")


# ---------------------------------------------------------------------------------- (b) lines
# Hand-written phrases per script, then random "words" from each script's letters.
PHRASES = [
    "Привет, мир! Как дела?", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.", "שלום עולם, מה שלומך?",
    "مرحبا بالعالم، كيف حالك؟", "نص عربي مع أرقام ١٢٣ و 456", "नमस्ते दुनिया, आप कैसे हैं?",
    "हिन्दी में संख्या १२३४", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง", "안녕하세요 세계, 반갑습니다!",
    "你好，世界！今天天气很好。", "日本語のテキスト、ひらがなとカタカナ。",
    "東京タワーは333メートルです。",
    "Ünïcödé façade naïve café résumé", "Straße, Æsir, Øresund, Łódź, İstanbul, ǅemal",
    "Tiếng Việt có dấu: Hà Nội, Sài Gòn", "Ωμέγα ≠ Omega; ℵ₀ < 𝔠", "ქართული ენა", "Հայերեն լեզու",
    "አማርኛ ቋንቋ", "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ", "ꦧꦱꦗꦮ", "ⴰⵎⴰⵣⵉⵖ", "𝕳𝖊𝖑𝖑𝖔 𝓦𝓸𝓻𝓵𝓭", "Ｆｕｌｌｗｉｄｔｈ　ＡＢＣ　１２３",
]
SCRIPTS = {  # (first, last) code points of letters to draw words from; marks appended separately
    "cyrillic": (0x0430, 0x044F), "greek": (0x03B1, 0x03C9), "hebrew": (0x05D0, 0x05EA),
    "arabic": (0x0627, 0x064A), "devanagari": (0x0905, 0x0939), "thai": (0x0E01, 0x0E2E),
    "hangul": (0xAC00, 0xD7A3), "cjk": (0x4E00, 0x9FFF), "hiragana": (0x3041, 0x3096),
    "katakana": (0x30A1, 0x30FA), "latin1": (0x00C0, 0x00FF), "armenian": (0x0561, 0x0586),
}
SCRIPT_MARKS = {"devanagari": (0x093E, 0x094D), "thai": (0x0E31, 0x0E3A),
                "arabic": (0x064B, 0x0652), "hebrew": (0x05B0, 0x05BC)}
SCRIPT_PUNCT = ["", "", ",", ".", "!", "?", "，", "。", "、", "،", "؟", "।", "«", "»", "「", "」",
                ":"]
EMOJI = ["😀", "😂", "🥲", "👍", "🙏", "🔥", "🎉", "❤️", "✨", "🚀", "🐍", "🤖", "🍕", "⚽", "🌍",
         "☕",
         "👨‍👩‍👧‍👦", "👩‍💻", "🧑‍🔬", "🏳️‍🌈", "🏴‍☠️", "❤️‍🔥", "👁️‍🗨️", "🇺🇸", "🇯🇵", "🇩🇪", "1️⃣", "#️⃣",
         "©️", "™️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]
SKIN = ["\U0001F3FB", "\U0001F3FC", "\U0001F3FD", "\U0001F3FE", "\U0001F3FF"]
HANDS = ["👋", "👍", "👩", "🧑", "👨", "🤝", "💪", "🙌"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
WORDS = ("the of and a to in is you that it he was for on are as with his they I at be this have "
         "from or one had by word but not what all were we when your can said there use an each "
         "which she do how their if will up other about out many then them these so some her would "
         "make like him into time has look two more write go see number no way could people my "
         "than first water been call who oil its now find long down day did get come made may "
         "part").split()
WHITESPACE = [" ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0", "\u3000", "\u2028", "\u2029",
              "\x85", "\u200b", "\u2009"]


def script_word(rng: random.Random, script: str) -> str:
    lo, hi = SCRIPTS[script]
    chars = []
    for _ in range(rng.randint(1, 8)):
        chars.append(chr(rng.randint(lo, hi)))
        if script in SCRIPT_MARKS and rng.random() < 0.4:
            chars.append(chr(rng.randint(*SCRIPT_MARKS[script])))
    return "".join(chars)


def multilingual_line(rng: random.Random) -> str:
    scripts = rng.sample(sorted(SCRIPTS), rng.randint(1, 3))
    out = []
    for _ in range(rng.randint(2, 12)):
        w = script_word(rng, rng.choice(scripts)) if rng.random() < 0.8 else rng.choice(WORDS)
        out.append(w + rng.choice(SCRIPT_PUNCT))
    return rng.choice([" ", " ", "", "\u3000"]).join(out)


def emoji_line(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 10)):
        r = rng.random()
        if r < 0.3:
            out.append(rng.choice(HANDS) + rng.choice(SKIN))           # skin tone modifier
        elif r < 0.45:                                                 # ZWJ with a skin tone
            out.append(rng.choice(["👩", "👨", "🧑"]) + rng.choice(SKIN) + "\u200d"
                       + rng.choice(["💻", "🔬", "🚀", "🍳", "🎨", "⚕️"]))
        elif r < 0.75:
            out.append(rng.choice(EMOJI))
        else:
            out.append(rng.choice(WORDS))
    return rng.choice(["", " ", "  "]).join(out)


def combining_line(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 8)):
        word = ""
        for _ in range(rng.randint(1, 6)):
            letter = rng.choice("aeiouAEOnczsyZ")
            n_marks = rng.choice([0, 1, 1, 2, 5])
            word += letter + "".join(chr(rng.randint(0x0300, 0x036F)) for _ in range(n_marks))
        out.append(word)
    return " ".join(out)


PY_SNIPPETS = [
    "def {f}({a}, {b}=None):\n    return {a} + ({b} or 0)",
    "class {F}:\n\tdef __init__(self):\n\t\tself.{a} = []  # {w}",
    "for {a} in range({n}):\n        if {a} % 2 == 0:\n            print(f\"{{{a}}}\")",
    "import numpy as np\nx = np.zeros(({n}, {m}), dtype=np.float32)",
    "    {a} = {{'{w}': {n}, \"{b}\": [{n}, {m}]}}",
    "try:\n    {f}()\nexcept (ValueError, KeyError) as e:\n    raise RuntimeError(str(e)) from e",
    "lambda {a}, *{b}, **kw: {a}**2 if {a} >= {n} else -{a}",
    "@property\ndef {f}(self) -> dict[str, int]:\n    '''{w} {w2}.'''\n    ...",
    "assert {a} != {b}, '{w} isn\\'t {w2}'   ",
    "{a}[{n}:{m}:-1] += {a}[::2]; {b} //= 0x{h}",
]
C_SNIPPETS = [
    "int {f}(int {a}, const char *{b}) {{\n    return {a} << {n};\n}}",
    "#include <stdio.h>\n#define {F}_MAX {n}\n",
    "for (size_t i = 0; i < {n}; ++i) {{ {a}[i] = {b}[i] * {m}; }}",
    "    if ({a} && !{b}) {{ goto fail; }} /* {w} */",
    "struct {F} {{ uint8_t {a}; float {b}[{n}]; }};",
    "printf(\"%d %s\\n\", {a}, {b}); // {w} {w2}",
]
JSON_SNIPPETS = [
    '{{"{a}": {n}, "{b}": [{n}, {m}, null], "ok": true}}',
    '  "{w}": "{w2}",\n  "{a}": {{"nested": [1.5e-{n}, -0.{m}]}}',
    '[{{"id": {n}}}, {{"id": {m}, "tag": "{w}"}}]',
]


def code_line(rng: random.Random) -> str:
    snippet = rng.choice(PY_SNIPPETS + C_SNIPPETS + JSON_SNIPPETS)
    names = ["x", "y", "idx", "buf", "self_", "ptr", "count", "_tmp", "dataLen", "max_T"]
    text = snippet.format(f=rng.choice(names) + "_fn", F=rng.choice(["Node", "GPTConfig", "Buf"]),
                          a=rng.choice(names), b=rng.choice(names), n=rng.randint(0, 5000),
                          m=rng.randint(0, 99), h=f"{rng.getrandbits(24):X}", w=rng.choice(WORDS),
                          w2=rng.choice(WORDS))
    indent = rng.choice(["", "", "    ", "\t", "        ", "  \t"])
    return indent + text + rng.choice(["", "", " ", "\t", "   "])


def whitespace_line(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 6)):
        ws = rng.choice(WHITESPACE[:3] if rng.random() < 0.6 else WHITESPACE)
        run = ws * rng.choice([1, 2, 3, 4, 5, 7, 8, 12, 16, 17, 31, 40])
        if rng.random() < 0.3:
            run += rng.choice(WHITESPACE)
        out.append(run)
        if rng.random() < 0.8:
            out.append(rng.choice(WORDS + ["x", "1", "!", "'s", "é", "日本", "😀"]))
    return "".join(out)


def contraction_line(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 8)):
        c = rng.choice(CONTRACTIONS)
        case = rng.random()
        if case < 0.25:
            c = c.upper()
        elif case < 0.35:
            c = c[0] + c[1:].capitalize()
        if rng.random() < 0.15:
            c = c.replace("'", rng.choice(["’", "`", "''"]))
        stem = rng.choice(WORDS + ["", "", "O", "don", "can", "they", "I", "WE", "9"])
        out.append(stem + c + rng.choice(["", "", "s", "'s", "x", "'"]))
    return rng.choice([" ", " ", "", "  ", "\n"]).join(out)


def digit_line(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.3:
            out.append(str(rng.randint(0, 10 ** rng.randint(1, 30))))
        elif r < 0.5:
            out.append(f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}")
        elif r < 0.6:
            out.append(f"{rng.randint(1, 999)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}")
        elif r < 0.7:
            out.append("".join(chr(rng.choice([0x0660, 0x0966, 0x0E50, 0xFF10]) + rng.randint(0, 9))
                               for _ in range(rng.randint(1, 6))))
        elif r < 0.8:
            out.append(rng.choice(["½", "²³", "⅓", "Ⅻ", "①②", "¹⁰", "٣.١٤"]))
        else:
            major, minor, patch = rng.randint(0, 9), rng.randint(0, 20), rng.randint(0, 99)
            out.append(f"v{major}.{minor}.{patch}-rc{rng.randint(1, 9)}")
    return rng.choice([" ", "", ", ", "  "]).join(out)


def special_line(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 4)):
        parts.append(rng.choice([rng.choice(WORDS), " " + rng.choice(WORDS), "\n", " ", "  ", "",
                                 "'s", "😀", "日本", "x" * rng.randint(1, 4)]))
        parts.append(EOT * rng.choice([1, 1, 1, 2]))
    parts.append(rng.choice(["", " ", "\n", " end.", "<|endoftext", "|>"]))
    return "".join(parts)


def text_lines(rng: random.Random) -> list[str]:
    """Lines from the texts shipped with minigpt and the SMS collection in /work/shared/data."""
    with open(VERDICT, encoding="utf-8", newline="") as f:
        verdict = f.read().split("\n")
    with open(INSTRUCTIONS, encoding="utf-8") as f:
        entries = json.load(f)
    fields = ("instruction", "input", "output")
    inst = [ln for e in entries for k in fields for ln in e[k].split("\n")]
    if sha256(SMS) != SMS_SHA256:
        refuse(f"{SMS} does not have the sha256 /work/shared/data/README.md gives")
    with open(SMS, encoding="utf-8", newline="") as f:
        sms = [ln.split("\t", 1)[1] for ln in f.read().split("\n") if "\t" in ln]
    inst = [ln for ln in inst if ln]
    return (verdict + rng.sample(inst, 900) + rng.sample(sms, 700))


def make_lines(seed: int = 0) -> None:
    tiktoken = need("tiktoken", "lines")
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    sha256(SHARED_GPT2 / "gpt2.tiktoken")                                # refuses if missing
    ranks = load_tiktoken_bpe(str(SHARED_GPT2 / "gpt2.tiktoken"))   # no download: a local path
    enc = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={EOT: 50256}, explicit_n_vocab=50257)
    rng = random.Random(seed)
    lines = text_lines(rng) + PHRASES
    makers = [(multilingual_line, 500), (emoji_line, 250), (combining_line, 120),
              (code_line, 350), (whitespace_line, 350), (contraction_line, 300),
              (digit_line, 200), (special_line, 150)]
    for make, n in makers:
        lines += [make(rng) for _ in range(n)]
    lines += [" " * n for n in range(1, 41)] + ["\n" * n for n in range(1, 21)]
    lines += ["x" + "\t" * n + "y" + " " * n for n in range(1, 21)]
    ordinary = [enc.encode_ordinary(s) for s in lines]
    special = [[i, enc.encode(s, allowed_special={EOT})] for i, s in enumerate(lines) if EOT in s]
    # a few multi-line chunks: lines[start:stop] joined by "\n" (+ one ending "\n")
    spans = [(0, 165), (300, 400), (1200, 1300), (1780, 1880), (2280, 2380), (2650, 2750),
             (3000, 3100), (3350, 3450), (3850, len(lines))]      # every kind of line is in one
    chunks = []
    for start, stop in spans:
        text = "\n".join(lines[start:stop]) + "\n"
        chunks.append([start, stop, enc.encode_ordinary(text),
                       enc.encode(text, allowed_special={EOT}) if EOT in text else None])
    header = {
        "what": ("tiktoken's gpt2 ids (tiktoken.Encoding built from /work/shared/data/gpt2/"
                 "gpt2.tiktoken with tiktoken_ext.openai_public.r50k_pat_str, "
                 "<|endoftext|>=50256)"),
        "tiktoken": tiktoken.__version__, "seed": seed,
        "generated_by": "benchmarks/make_outside_fixtures.py lines",
        "lines": "the texts: the-verdict.txt lines, then samples of instruction-data.json and "
                 "SMSSpamCollection, phrases, generated lines (scripts, emoji, combining marks, "
                 "code, whitespace, contractions, digits, <|endoftext|> text), runs",
        "rows": "lines[i] = [text, encode_ordinary(text)]; special = [i, encode(lines[i] text, "
                "allowed_special={'<|endoftext|>'})] for every line holding <|endoftext|>; "
                "chunks = [start, stop, encode_ordinary(T), "
                "encode(T, allowed_special={'<|endoftext|>'}) or null "
                "when T has no <|endoftext|>] with T = '\\n'.join(texts[start:stop]) + '\\n'",
    }
    write_json(OUT / "tiktoken_lines.json", header,
               {"lines": [[s, ids] for s, ids in zip(lines, ordinary, strict=True)],
                "special": special, "chunks": chunks})
    print(f"  {len(lines)} lines, {len(special)} with {EOT}, {len(chunks)} chunks, "
          f"{sum(map(len, ordinary)):,} ids line by line")


# ---------------------------------------------------------------------------------- (c) train
def make_train(vocab_size: int = 1000) -> None:
    tiktoken = need("tiktoken", "train")
    from tiktoken._educational import bpe_train
    from tiktoken_ext.openai_public import r50k_pat_str

    # the pattern of tiktoken's own educational example (train_simple_encoding), OpenAI's original
    source = inspect.getsource(need("tiktoken._educational", "train").train_simple_encoding)
    edu_pattern = re.search(r'r"""(.*?)"""', source, re.S)[1]
    with open(VERDICT, encoding="utf-8", newline="") as f:
        text = f.read()
    runs = []
    for name, pattern in (("gpt2", edu_pattern), ("r50k", r50k_pat_str)):
        ranks = bpe_train(text, vocab_size, pattern, visualise=None)
        tokens = [b.hex() for b, r in sorted(ranks.items(), key=lambda kv: kv[1]) if r >= 256]
        runs.append({"name": name, "pattern": pattern, "tokens": tokens})
        print(f"  {name}: {len(tokens)} merges; the first five "
              f"{[bytes.fromhex(t) for t in tokens[:5]]}")
    doc = {"_header": (
        f"tiktoken {tiktoken.__version__}'s tiktoken._educational.bpe_train(text, {vocab_size}, "
        "pattern, visualise=None) on minigpt/assets/texts/the-verdict.txt read with newline=''. "
        "'tokens': the bytes (hex) of ranks 256, 257, ... in order, i.e. the merges in the order "
        "learned. 'gpt2': the pattern of tiktoken's train_simple_encoding (OpenAI's original); "
        "'r50k': tiktoken's r50k_pat_str. Written by benchmarks/make_outside_fixtures.py train."),
        "text": "minigpt/assets/texts/the-verdict.txt", "text_sha256": sha256(VERDICT),
        "vocab_size": vocab_size, "runs": runs}
    path = OUT / "edu_bpe_train_verdict_1000.json"
    with open(path, "w", encoding="ascii") as f:
        f.write(json.dumps({k: v for k, v in doc.items() if k != "runs"}, indent=1)[:-2])
        f.write(',\n "runs": [\n')
        f.write(",\n".join(json.dumps(r, separators=(",", ":")) for r in runs))
        f.write("\n ]\n}\n")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")


# ---------------------------------------------------------------------------------- (d) model
MODEL = dict(vocab_size=211, context_length=40, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
             qkv_bias=False, tie_weights=False)
B, T = 2, 33


def seeded_weights(np, seed: int = 0) -> dict:
    """Non-trivial float64 weights under minigpt's (Hugging Face GPT-2) names and x @ W layout:
    layernorm scales 1 + 0.3 N, biases 0.1 N, matrices 0.2 N (lm_head is (V, C))."""
    V, Tc, C, L = (MODEL[k] for k in ("vocab_size", "context_length", "emb_dim", "n_layers"))
    shapes = {"wte.weight": (V, C), "wpe.weight": (Tc, C)}
    for i in range(L):
        h = f"h.{i}."
        shapes |= {h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
                   h + "attn.c_attn.weight": (C, 3 * C),
                   h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
                   h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
                   h + "mlp.c_fc.weight": (C, 4 * C),
                   h + "mlp.c_fc.bias": (4 * C,), h + "mlp.c_proj.weight": (4 * C, C),
                   h + "mlp.c_proj.bias": (C,)}
    shapes |= {"ln_f.weight": (C,), "ln_f.bias": (C,), "lm_head.weight": (V, C)}
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        z = rng.standard_normal(shape)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            out[name] = 1.0 + 0.3 * z
        elif name.endswith("bias"):
            out[name] = 0.1 * z
        else:
            out[name] = 0.2 * z
    return out


def book_gpt(torch, weights: dict):
    """The book's GPTModel (chapter 4) for training: separate q/k/v projections WITHOUT bias, an
    output head of its own WITHOUT bias, tanh GELU, layernorm eps 1e-5 with biased variance.
    Returns (model, {minigpt name: function giving that parameter's gradient in minigpt layout})."""
    nn = torch.nn
    C, H = MODEL["emb_dim"], MODEL["n_heads"]

    class LayerNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale, self.shift = nn.Parameter(torch.ones(C)), nn.Parameter(torch.zeros(C))

        def forward(self, x):
            mean = x.mean(dim=-1, keepdim=True)
            var = x.var(dim=-1, keepdim=True, unbiased=False)
            return self.scale * (x - mean) / torch.sqrt(var + 1e-5) + self.shift

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.W_query = nn.Linear(C, C, bias=False)
            self.W_key = nn.Linear(C, C, bias=False)
            self.W_value = nn.Linear(C, C, bias=False)
            self.out_proj = nn.Linear(C, C)
            self.dropout = nn.Dropout(MODEL["drop_rate"])

        def forward(self, x):
            b, t, _ = x.shape
            hs = C // H
            q, k, v = (w(x).view(b, t, H, hs).transpose(1, 2)
                       for w in (self.W_query, self.W_key, self.W_value))
            scores = q @ k.transpose(2, 3)                                     # (b, H, t, t)
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
            att = torch.softmax(scores.masked_fill(mask, -torch.inf) / hs ** 0.5, dim=-1)
            ctx = (self.dropout(att) @ v).transpose(1, 2).reshape(b, t, C)
            return self.out_proj(ctx)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.att, self.norm1, self.norm2 = Attention(), LayerNorm(), LayerNorm()
            self.ff = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(approximate="tanh"),
                                    nn.Linear(4 * C, C))
            self.drop_shortcut = nn.Dropout(MODEL["drop_rate"])

        def forward(self, x):
            x = x + self.drop_shortcut(self.att(self.norm1(x)))
            return x + self.drop_shortcut(self.ff(self.norm2(x)))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = nn.Embedding(MODEL["vocab_size"], C)
            self.pos_emb = nn.Embedding(MODEL["context_length"], C)
            self.drop_emb = nn.Dropout(MODEL["drop_rate"])
            self.trf_blocks = nn.Sequential(*[Block() for _ in range(MODEL["n_layers"])])
            self.final_norm = LayerNorm()
            self.out_head = nn.Linear(C, MODEL["vocab_size"], bias=False)

        def forward(self, idx):
            t = idx.shape[1]
            x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(torch.arange(t)))
            return self.out_head(self.final_norm(self.trf_blocks(x)))

    model = GPT().double()
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    grads = {}                     # minigpt name -> callable returning the grad in minigpt layout
    with torch.no_grad():
        def put(param, value, name, transpose=False):
            param.copy_(value.T if transpose else value)
            grads[name] = (lambda p=param: p.grad.T) if transpose else (lambda p=param: p.grad)

        put(model.tok_emb.weight, w["wte.weight"], "wte.weight")
        put(model.pos_emb.weight, w["wpe.weight"], "wpe.weight")
        for i, blk in enumerate(model.trf_blocks):
            h = f"h.{i}."
            put(blk.norm1.scale, w[h + "ln_1.weight"], h + "ln_1.weight")
            put(blk.norm1.shift, w[h + "ln_1.bias"], h + "ln_1.bias")
            qkv = w[h + "attn.c_attn.weight"]                                    # (C, 3C)
            for j, lin in enumerate((blk.att.W_query, blk.att.W_key, blk.att.W_value)):
                lin.weight.copy_(qkv[:, j * C:(j + 1) * C].T)
            grads[h + "attn.c_attn.weight"] = lambda a=blk.att: torch.cat(
                [a.W_query.weight.grad.T, a.W_key.weight.grad.T, a.W_value.weight.grad.T], dim=1)
            put(blk.att.out_proj.weight, w[h + "attn.c_proj.weight"], h + "attn.c_proj.weight",
                True)
            put(blk.att.out_proj.bias, w[h + "attn.c_proj.bias"], h + "attn.c_proj.bias")
            put(blk.norm2.scale, w[h + "ln_2.weight"], h + "ln_2.weight")
            put(blk.norm2.shift, w[h + "ln_2.bias"], h + "ln_2.bias")
            put(blk.ff[0].weight, w[h + "mlp.c_fc.weight"], h + "mlp.c_fc.weight", True)
            put(blk.ff[0].bias, w[h + "mlp.c_fc.bias"], h + "mlp.c_fc.bias")
            put(blk.ff[2].weight, w[h + "mlp.c_proj.weight"], h + "mlp.c_proj.weight", True)
            put(blk.ff[2].bias, w[h + "mlp.c_proj.bias"], h + "mlp.c_proj.bias")
        put(model.final_norm.scale, w["ln_f.weight"], "ln_f.weight")
        put(model.final_norm.shift, w["ln_f.bias"], "ln_f.bias")
        put(model.out_head.weight, w["lm_head.weight"], "lm_head.weight")       # (V, C) both
    n_torch = sum(p.numel() for p in model.parameters())
    if n_torch != sum(v.size for v in weights.values()):
        refuse(f"the book model has {n_torch} parameters, the weights "
                 f"{sum(v.size for v in weights.values())}")
    return model, grads


def transformers_gpt(torch, transformers, weights: dict):
    """transformers' GPT2LMHeadModel with an untied head and c_attn.bias fixed at zero."""
    cfg = transformers.GPT2Config(
        vocab_size=MODEL["vocab_size"], n_positions=MODEL["context_length"],
        n_embd=MODEL["emb_dim"], n_layer=MODEL["n_layers"], n_head=MODEL["n_heads"],
        layer_norm_epsilon=1e-5,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=False, bos_token_id=MODEL["vocab_size"] - 1,
        eos_token_id=MODEL["vocab_size"] - 1)
    model = transformers.GPT2LMHeadModel(cfg).double()
    model.eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            key = name.removeprefix("transformer.")
            if key.endswith("attn.c_attn.bias"):
                p.zero_()
                p.requires_grad_(False)
            else:
                p.copy_(torch.from_numpy(weights[key]))
    if params["lm_head.weight"].data_ptr() == params["transformer.wte.weight"].data_ptr():
        refuse("transformers tied the head although tie_word_embeddings=False")
    return model


def make_model(seed: int = 0) -> None:
    np = need("numpy", "model")
    torch = need("torch", "model")
    transformers = need("transformers", "model")
    st = need("safetensors.numpy", "model")
    torch.set_num_threads(1)
    F = torch.nn.functional
    weights = seeded_weights(np, seed)
    rng = np.random.default_rng(seed + 1)
    idx = rng.integers(0, MODEL["vocab_size"], size=(B, T), dtype=np.int64)
    targets = rng.integers(0, MODEL["vocab_size"], size=(B, T), dtype=np.int64)
    targets[0, 0] = targets[0, 17] = targets[1, T - 1] = -100                   # ignored positions

    def run(model, grad_of):
        logits = model(torch.from_numpy(idx))
        logits = getattr(logits, "logits", logits)
        loss = F.cross_entropy(logits.reshape(-1, MODEL["vocab_size"]),
                               torch.from_numpy(targets).reshape(-1), ignore_index=-100)
        loss.backward()
        return logits.detach().numpy(), loss.detach().numpy(), {
            k: g().detach().numpy().copy() for k, g in grad_of.items()}

    book, book_grads = book_gpt(torch, weights)
    book.eval()
    logits, loss, grads = run(book, book_grads)
    hf = transformers_gpt(torch, transformers, weights)
    hf_grads = {n.removeprefix("transformer."): (lambda p=p: p.grad)
                for n, p in hf.named_parameters() if p.requires_grad}
    h_logits, h_loss, h_grads = run(hf, hf_grads)

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    if set(h_grads) != set(grads) or set(grads) != set(weights):
        refuse(f"parameter names differ: {sorted(set(h_grads) ^ set(grads))}")
    errs = [rel(h_logits, logits), rel(h_loss, loss)] + [rel(h_grads[k], grads[k]) for k in grads]
    worst = max(errs)
    print(f"  book-structured torch model vs transformers GPT2LMHeadModel: worst rel err "
          f"{worst:.1e}")
    if worst > 1e-12:
        refuse("the two PyTorch models disagree")
    tensors = {"idx": idx, "targets": targets, "logits": logits, "loss": loss.astype(np.float64)}
    tensors |= {"weight." + k: v for k, v in weights.items()}
    tensors |= {"grad." + k: v for k, v in grads.items()}
    info = {"config": MODEL, "torch": torch.__version__,
            "transformers": transformers.__version__, "seed": seed,
            "dropout": "off: drop_rate 0.0 and eval mode (dropout's random draws are not shared "
                       "between libraries)",
            "loss": ("F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), "
                     "ignore_index=-100)"),
            "generated_by": "benchmarks/make_outside_fixtures.py model"}
    # one metadata entry: safetensors writes several in a random order (not byte-reproducible)
    meta = {"fixture": json.dumps(info, sort_keys=True)}
    path = OUT / "gpt_train_untied_T33.safetensors"
    st.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes): "
          f"loss {float(loss):.12f}, {len(grads)} gradients")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=("all", "hashes", "lines", "train", "model"))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in (("hashes", make_hashes), ("lines", make_lines), ("train", make_train),
                       ("model", make_model)):
        if args.what in ("all", name):
            print(f"[{name}]")
            make()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

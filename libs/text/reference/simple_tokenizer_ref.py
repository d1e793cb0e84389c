#!/usr/bin/python3
"""Reference CLIP tokenizer: writes the expectations that libs/text's C++ tests check.

This re-implements, step for step, the tokenizer of OpenAI CLIP
(clip/simple_tokenizer.py and clip.tokenize, MIT licence, Copyright (c) 2021
OpenAI; the same code ships in open_clip):

  basic_clean      ftfy.fix_text, then html.unescape twice, then strip
  whitespace_clean regex `\\s+` -> ' ', then strip; then str.lower()
  split            the CLIP regex below, with re.IGNORECASE
  bpe              byte-level BPE over the first 49152-256-2 merges, '</w>' ends a word
  tokenize         [SOT] + ids + [EOT], zero-padded to the context length; too long
                   -> cut to the context length with EOT as the last id (truncate=True)

Requirements (Debian): python3-regex. ftfy is not packaged for Debian; when it
cannot be imported, basic_clean uses ftfy_subset() below, which is the part of
ftfy 6's fix_text that libs/text implements in C++ (everything except the
mojibake heuristics of fix_encoding). The output records which one was used.

Regenerate the committed expectations from the repository root with:

  /usr/bin/python3 libs/text/reference/simple_tokenizer_ref.py \\
      --vocab tests/data/clip/bpe_simple_vocab_16e6.txt.gz \\
      --cases tests/data/clip/tokenizer_cases.json \\
      --out tests/data/clip/tokenizer_expected.json
"""

import argparse
import gzip
import html
import html.entities
import json
import re as stdlib_re
import sys
import unicodedata

import regex

try:  # Only where ftfy is installed; Debian has no package for it.
    import ftfy  # type: ignore
except ImportError:  # pragma: no cover - depends on the machine
    ftfy = None

NUM_MERGES = 49152 - 256 - 2
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
SPLIT_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


# ---------------------------------------------------------------------------
# The subset of ftfy 6 fix_text that the C++ tokenizer implements.
# ---------------------------------------------------------------------------

FTFY_LIGATURES = {
    0x0132: "IJ", 0x0133: "ij", 0x0149: "\u02bcn",
    0x01F1: "DZ", 0x01F2: "Dz", 0x01F3: "dz",
    0x01C4: "D\u017d", 0x01C5: "D\u017e", 0x01C6: "d\u017e",
    0x01C7: "LJ", 0x01C8: "Lj", 0x01C9: "lj",
    0x01CA: "NJ", 0x01CB: "Nj", 0x01CC: "nj",
    0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl",
    0xFB05: "\u017ft", 0xFB06: "st",
}

FTFY_CONTROL_CHARS = dict.fromkeys(
    list(range(0x00, 0x09)) + [0x0B] + list(range(0x0E, 0x20)) + [0x7F]
    + list(range(0x206A, 0x2070)) + [0xFEFF] + list(range(0xFFF9, 0xFFFD))
)


def ftfy_width_map():
    """Fullwidth/halfwidth forms -> their NFKC form; U+3000 -> space."""
    width_map = {0x3000: " "}
    for cp in range(0xFF01, 0xFFF0):
        alternate = unicodedata.normalize("NFKC", chr(cp))
        if alternate != chr(cp):
            width_map[cp] = alternate
    return width_map


def ftfy_entities():
    """ftfy's entity table: HTML5 names with ';', plus upper-cased variants."""
    table = {}
    for name, value in html.entities.html5.items():
        if not name.endswith(";"):
            continue
        table["&" + name] = value
        if name == name.lower():
            upper = "&" + name.upper()
            if html.unescape(upper) == upper:
                table[upper] = value.upper()
    return table


FTFY_WIDTH_MAP = ftfy_width_map()
FTFY_ENTITIES = ftfy_entities()
FTFY_ENTITY_RE = stdlib_re.compile(r"&#?[0-9A-Za-z]{1,24};")
FTFY_ANSI_RE = stdlib_re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
FTFY_C1_RE = stdlib_re.compile("[\x80-\x9f]")


def _ftfy_entity(match):
    text = match.group(0)
    if text in FTFY_ENTITIES:
        return FTFY_ENTITIES[text]
    if text.startswith("&#"):
        decoded = html.unescape(text)
        return text if ";" in decoded else decoded
    return text


def _ftfy_c1(match):
    byte = match.group(0).encode("latin-1")
    try:
        return byte.decode("cp1252")
    except UnicodeDecodeError:  # "sloppy" windows-1252 keeps the unmapped five
        return match.group(0)


def _ftfy_segment(text, unescape):
    while True:
        before = text
        if unescape:
            text = FTFY_ENTITY_RE.sub(_ftfy_entity, text)
        text = FTFY_C1_RE.sub(_ftfy_c1, text)
        text = text.translate(FTFY_LIGATURES)
        text = text.translate(FTFY_WIDTH_MAP)
        text = stdlib_re.sub("[\u02bc\u2018-\u201b]", "'", stdlib_re.sub("[\u201c-\u201f]", '"', text))
        for old in ("\r\n", "\r", "\u2028", "\u2029", "\u0085"):
            text = text.replace(old, "\n")
        text = FTFY_ANSI_RE.sub("", text)
        text = text.translate(FTFY_CONTROL_CHARS)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def ftfy_subset(text):
    """ftfy 6 fix_text with default settings, minus fix_encoding (mojibake)."""
    out = []
    unescape = True
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        segment = text[pos:end]
        if "<" in segment:
            unescape = False
        out.append(_ftfy_segment(segment, unescape))
        pos = end
    return "".join(out)


# ---------------------------------------------------------------------------
# CLIP's tokenizer.
# ---------------------------------------------------------------------------

def bytes_to_unicode():
    """Byte -> printable character, as CLIP/GPT-2 define it (dict order matters)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    order = printable + [b for b in range(256) if b not in printable]
    return {b: mapping[b] for b in order}


class ClipTokenizerRef:
    def __init__(self, vocab_path, use_ftfy):
        self.use_ftfy = use_ftfy
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        with gzip.open(vocab_path) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
        vocab = list(self.byte_encoder.values())
        vocab += [c + "</w>" for c in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot = self.encoder[SOT]
        self.eot = self.encoder[EOT]

    def clean(self, text):
        text = ftfy.fix_text(text) if self.use_ftfy else ftfy_subset(text)
        text = html.unescape(html.unescape(text)).strip()
        text = regex.sub(r"\s+", " ", text).strip()
        return text.lower()

    def bpe(self, token):
        if token in (SOT, EOT):
            return [token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            ranked = [(self.ranks.get(pair, float("inf")), pair) for pair in zip(word, word[1:])]
            rank, (first, second) = min(ranked, key=lambda x: x[0])
            if rank == float("inf"):
                break
            merged = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text):
        ids = []
        for token in SPLIT_PATTERN.findall(self.clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(mapped))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[i] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, text, context_length=77):
        """clip.tokenize(text, context_length, truncate=True) for one string."""
        tokens = [self.sot] + self.encode(text) + [self.eot]
        full_length = len(tokens)
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = self.eot
        return tokens + [0] * (context_length - len(tokens)), full_length


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--cases", required=True, help="JSON list of {name, text}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--context-length", type=int, default=77)
    parser.add_argument("--cleaner", choices=["auto", "ftfy", "subset"], default="auto")
    args = parser.parse_args()

    use_ftfy = args.cleaner == "ftfy" or (args.cleaner == "auto" and ftfy is not None)
    if use_ftfy and ftfy is None:
        sys.exit("ftfy is not importable")
    tok = ClipTokenizerRef(args.vocab, use_ftfy)
    with open(args.cases, encoding="utf-8") as f:
        cases = json.load(f)

    results = []
    for case in cases:
        ids, full_length = tok.tokenize(case["text"], args.context_length)
        end = ids.index(tok.eot)
        results.append({
            "name": case["name"],
            "text": case["text"],
            "cleaned": tok.clean(case["text"]),
            "num_tokens": full_length,
            "ids": ids,
            "decoded": tok.decode(ids[1:end]),
        })
    doc = {
        "generator": "libs/text/reference/simple_tokenizer_ref.py",
        "cleaner": ("ftfy " + ftfy.__version__) if use_ftfy else "ftfy_subset (ftfy 6 fix_text without fix_encoding)",
        "python": sys.version.split()[0],
        "unicodedata": unicodedata.unidata_version,
        "regex": regex.__version__,
        "context_length": args.context_length,
        "sot_token": tok.sot,
        "eot_token": tok.eot,
        "cases": results,
    }
    # One line per case keeps regenerated files easy to diff.
    header = json.dumps({k: v for k, v in doc.items() if k != "cases"}, ensure_ascii=True, indent=1)
    lines = [json.dumps(case, ensure_ascii=True) for case in results]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(header[:-2] + ',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n")
    print(f"wrote {len(results)} cases to {args.out}")


if __name__ == "__main__":
    main()

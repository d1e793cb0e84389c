#!/usr/bin/python3
"""Writes random tokenizer cases for a differential check of libs/text.

The strings are built from pieces that stress every stage of CLIP's cleaning
and splitting: entities, control and C1 characters, ligatures, width forms,
combining marks (NFC), case mapping, contractions, special tokens, scripts.

  /usr/bin/python3 libs/text/reference/make_random_cases.py --count 3000 --seed 1 > /tmp/random_cases.json
  /usr/bin/python3 libs/text/reference/simple_tokenizer_ref.py \\
      --vocab tests/data/clip/bpe_simple_vocab_16e6.txt.gz \\
      --cases /tmp/random_cases.json --out /tmp/random_expected.json
  IMAGESEARCH_TEXT_EXPECTED=/tmp/random_expected.json \\
      <build>/libs/text/imagesearch_text_test "[.differential]"
"""

import argparse
import json
import random

PIECES = [
    # ASCII words, digits, punctuation, whitespace
    "a", "photo", "Cat", "DOG", "the", "x", "1", "42", "3.14", " ", " ", " ", "  ", "\t", "\n", "\r\n", "\r",
    ".", ",", "!", "?", "-", "_", "/", "\\", "(", ")", "*", "@", "#", "$", "%", "^", "~", "`", "|", "+", "=",
    # contractions and quotes
    "'", "'s", "'S", "'t", "'re", "'ve", "'m", "'ll", "'LL", "'d", "''", "\u2019", "\u2018", "\u201c", "\u201d",
    "\u02bc", "\u201b", "\u201f", "\"",
    # HTML entities, whole and broken
    "&", "&amp;", "&amp", "&lt;", "&lt", "&gt;", "&quot;", "&#", "&#x", "&#65;", "&#x41;", "&#233", "&#0;",
    "&#128;", "&#150;", "&#59;", "&#1;", "&#xD800;", "&#99999999;", "&eacute;", "&EACUTE;", "&notin;", "&not",
    "&nbsp;", "&hellip;", "&copy", ";", "<", ">", "<b>", "&amp;amp;", "&amp;lt;",
    # special tokens and near misses
    "<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "<|\u017ftartoftext|>", "<|", "|>",
    # control, C1, format characters
    "\x00", "\x07", "\x0b", "\x0c", "\x1b[31m", "\x1b[0m", "\x1b[", "\x1c", "\x1f", "\x7f", "\x80", "\x81",
    "\x85", "\x93", "\x94", "\x9d", "\u200b", "\u200d", "\ufeff", "\u206a", "\u2028", "\u2029", "\u00a0",
    "\u3000", "\u2003", "\u00ad", "\ufffc", "\ufffd",
    # ligatures, width forms
    "\ufb01", "\ufb02", "\ufb00", "\ufb03", "\ufb05", "\u0133", "\u01c4", "\u01c5", "\u01c8", "\u0149",
    "\uff21", "\uff41", "\uff11", "\uff01", "\uff0c", "\uff8a", "\uff9e", "\uff9f", "\uff76", "\uffe5", "\uffe3",
    # combining marks and case mapping
    "e", "\u0301", "\u0308", "\u0307", "\u0345", "\u3099", "\u309a", "\u00e9", "\u00c9", "\u00df", "\u1e9e",
    "\u0130", "\u0131", "I", "\u017f", "\u212a", "\u212b", "\u03a3", "\u039f", "\u03c3", "\u03c2", "\u0391",
    "\u1f88", "\u0410", "\u0436", "\u0401", "\u01c6",
    # scripts, numbers, emoji
    "\u65e5\u672c", "\u732b", "\u30c6", "\u30ad", "\u304b", "\ud55c", "\u1100", "\u1161", "\u11a8",
    "\u0645\u0631", "\u05e9", "\u0928\u092e", "\u094d", "\u0e20\u0e32", "\u0e48", "\u0663", "\u00bd", "\u00b2",
    "\u2165", "\u2460", "\U0001d7d9", "\U0001d400", "\U0001f600", "\U0001f44d", "\U0001f3fd", "\u2764",
    "\ufe0f", "\U0001f1ef", "\U0001f1f5", "\U0002070e", "\u2103", "\u2116",
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cases = []
    for i in range(args.count):
        n = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 40])
        text = "".join(rng.choice(PIECES) for _ in range(n))
        cases.append({"name": "random_%d" % i, "text": text})
    print(json.dumps(cases, ensure_ascii=True))


if __name__ == "__main__":
    main()

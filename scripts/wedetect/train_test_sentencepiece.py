#!/usr/bin/env python3
"""A small XLM-R-like SentencePiece model for tests: Unigram, `<unk>`, `<s>`, `</s>` first,
NFKC normalisation with whitespace collapsing (SentencePiece's defaults, as XLM-R's), trained by
the `sentencepiece` library on a multilingual corpus made from xlmr_tokenizer.py's check pools.
Writes DIR/sentencepiece.bpe.model; the XLM-R vocabulary of the result is pieces + 2.

    python scripts/wedetect/train_test_sentencepiece.py --out DIR [--pieces 2000]
"""

import argparse
import io
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xlmr_tokenizer import POOLS  # noqa: E402


def corpus(lines=20000, seed=1):
    rng = random.Random(seed)
    words = []
    for name, chars in POOLS.items():
        if name == "whitespace":
            continue
        words += chars.split() if " " in chars else [chars[i:i + rng.randint(1, 4)] for i in range(len(chars))]
    # made-up Latin words, so that the model has enough distinct pieces to learn
    words += ["".join(rng.choice("aeioubcdfghklmnprstvwz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    for _ in range(lines):
        yield " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--pieces", type=int, default=2000)
    args = ap.parse_args()
    import sentencepiece

    os.makedirs(args.out, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=corpus(), model_writer=model, vocab_size=args.pieces, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=True, minloglevel=2)
    with open(os.path.join(args.out, "sentencepiece.bpe.model"), "wb") as f:
        f.write(model.getvalue())
    print(f"{args.out}/sentencepiece.bpe.model: {args.pieces} pieces")


if __name__ == "__main__":
    main()

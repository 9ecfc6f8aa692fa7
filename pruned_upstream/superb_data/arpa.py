"""A word n-gram language model in ARPA format, and a letter lexicon, for s3prl's KenLM ASR decoding (torch-free).

s3prl 0.4.18 decodes ASR with a language model through flashlight's Python bindings
(``s3prl/downstream/asr/w2l_decoder.py``, ``W2lKenLMDecoder``): ``KenLM(kenlm_model, word_dict)``
loads an ARPA (or KenLM binary) file and ``load_words(lexicon)`` reads one word a line followed
by its spelling in the ASR tokens (``downstream/asr/char.dict``: upper-case letters, ``'`` and
``|`` as the word boundary), e.g. ``HELLO\\tH E L L O |`` as in fairseq's
``librispeech_lexicon.lst``. For real data s3prl's ``downstream/docs/superb.md`` names LibriSpeech's
official ``4-gram.arpa.gz`` (openslr.org/11) and that lexicon; the small data here writes its
own model from the training transcripts with :func:`write_arpa`.

The model (our own estimate, not KenLM's lmplz): absolute discounting with back-off.
For an n-gram ``h w`` seen ``c(h w)`` times, ``p(w | h) = (c(h w) - D_n) / c(h)`` with
``c(h) = sum_w c(h w)`` and ``D_n = n1 / (n1 + 2 n2)`` of that order (Ney's estimate,
``n1``/``n2``: how many n-grams are seen once/twice; 0.5 when undefined, kept in [0.1, 0.9]).
An unseen ``w`` backs off: ``p(w | h) = b(h) p(w | h')`` (``h'``: ``h`` without its first word),
with ``b(h)`` chosen so that every context's distribution sums to 1. Unigrams: the discounted
mass goes to ``<unk>``; ``<s>`` is never predicted (log10 -99, the ARPA convention).
Each sentence is ``<s> w1 .. wn </s>``, as KenLM scores it with its begin/end-of-sentence.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
NEVER = -99.0  # log10 probability of <s>: never predicted
LEXICON_TOKENS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")  # char.dict's letters; '|' ends a word


def _check_word(word: str) -> str:
    if not word or any(c.isspace() for c in word) or word in (BOS, EOS, UNK):
        raise ValueError(f"{word!r} cannot be a word of the language model")
    return word


def discount(counts: Counter) -> float:
    """Ney's D = n1 / (n1 + 2 n2) of one order, 0.5 when undefined, kept in [0.1, 0.9]."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    value = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    return min(0.9, max(0.1, value))


class NGramModel:
    """Counts and the back-off model of :func:`write_arpa`; ``prob(w, context)`` is its probability."""

    def __init__(self, sentences, order: int = 3):
        if order < 1:
            raise ValueError("order must be at least 1")
        self.order = order
        self.counts: list[Counter] = [Counter() for _ in range(order)]  # counts[k]: (k+1)-grams
        for sentence in sentences:
            words = [BOS, *(_check_word(w) for w in sentence), EOS]
            for n in range(1, order + 1):
                for i in range(len(words) - n + 1):
                    gram = tuple(words[i:i + n])
                    if gram != (BOS,):
                        self.counts[n - 1][gram] += 1
        if not self.counts[0]:
            raise ValueError("no sentence to estimate a language model from")
        self.vocab = sorted({g[0] for g in self.counts[0]} | {UNK})  # every predictable word (no <s>)
        self.discounts = [discount(c) for c in self.counts]
        self.context_total: list[dict] = [defaultdict(int) for _ in range(order)]
        self.followers: list[dict] = [defaultdict(list) for _ in range(order)]
        for k, counts in enumerate(self.counts):
            for gram, c in counts.items():
                self.context_total[k][gram[:-1]] += c
                self.followers[k][gram[:-1]].append(gram[-1])
        self.seen_prob: dict[tuple, float] = {}
        self.backoff: dict[tuple, float] = {}
        self._estimate()

    def _estimate(self) -> None:
        total, d = self.context_total[0][()], self.discounts[0]
        for (w,), c in self.counts[0].items():
            self.seen_prob[(w,)] = (c - d) / total
        self.seen_prob[(UNK,)] = self.seen_prob.get((UNK,), 0.0) + d * len(self.counts[0]) / total
        for k in range(1, self.order):
            d = self.discounts[k]
            for gram, c in self.counts[k].items():
                self.seen_prob[gram] = (c - d) / self.context_total[k][gram[:-1]]
        for k in range(1, self.order):  # b(h) for each context h of order k
            for context, words in self.followers[k].items():
                left = 1.0 - sum(self.seen_prob[context + (w,)] for w in words)
                lower = 1.0 - sum(self.prob(w, context[1:]) for w in words)
                self.backoff[context] = left / lower

    def prob(self, word: str, context: tuple = ()) -> float:
        """p(word | context) of the back-off model (the context's last order-1 words count)."""
        context = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        if word == BOS:
            return 0.0
        if word not in self.vocab:
            word = UNK
        weight = 1.0
        while True:
            gram = context + (word,)
            if gram in self.seen_prob:
                return weight * self.seen_prob[gram]
            if not context:
                raise AssertionError(f"{word!r} has no unigram")  # every vocab word has one
            weight *= self.backoff.get(context, 1.0)
            context = context[1:]

    def sentence_log10(self, words) -> float:
        """log10 p(<s> words </s>), each word given the ones before it (as KenLM scores a sentence)."""
        history, total = [BOS], 0.0
        for word in [*words, EOS]:
            total += math.log10(self.prob(word, tuple(history)))
            history.append(word if word in self.vocab else UNK)
        return total

    def arpa_text(self) -> str:
        grams: list[list[tuple]] = [[(BOS,), *sorted(g for g in self.seen_prob if len(g) == 1)]]
        grams += [sorted(g for g in self.seen_prob if len(g) == n) for n in range(2, self.order + 1)]
        lines = ["", "\\data\\", *(f"ngram {n + 1}={len(g)}" for n, g in enumerate(grams))]
        for n, order_grams in enumerate(grams, start=1):
            lines += ["", f"\\{n}-grams:"]
            for gram in order_grams:
                logp = NEVER if gram == (BOS,) else math.log10(self.seen_prob[gram])
                line = f"{logp:.7f}\t{' '.join(gram)}"
                if n < self.order and gram in self.backoff:
                    line += f"\t{math.log10(self.backoff[gram]):.7f}"
                elif n < self.order and n == 1 and gram == (BOS,):
                    line += "\t0.0000000"
                lines.append(line)
        lines += ["", "\\end\\", ""]
        return "\n".join(lines)


def write_arpa(path: str | os.PathLike, sentences, order: int = 3) -> NGramModel:
    """Write the model of `sentences` (lists of words) as an ARPA file; returns it."""
    model = NGramModel([list(s) for s in sentences], order)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(model.arpa_text())
    os.replace(tmp, path)
    return model


def spelling(word: str) -> list[str]:
    """The ASR tokens of a word (char.dict's letters), then ``|``; ValueError for any other character."""
    letters = list(word.upper())
    bad = sorted(set(letters) - LEXICON_TOKENS)
    if not letters or bad:
        raise ValueError(f"{word!r}: characters {bad} are not ASR tokens (char.dict)")
    return [*letters, "|"]


def write_letter_lexicon(path: str | os.PathLike, words) -> Path:
    """``WORD\\tW O R D |`` per word, sorted: the layout of fairseq's librispeech_lexicon.lst."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unique = sorted({_check_word(w) for w in words})
    path.write_text("".join(f"{w}\t{' '.join(spelling(w))}\n" for w in unique))
    return path

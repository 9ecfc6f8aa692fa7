"""Our ARPA writer checked against an independent reader: KenLM, through flashlight-text's binding
(the loader s3prl's asr/w2l_decoder.py uses), and s3prl's own KenLM decoder run on our files."""

from __future__ import annotations

import math
import random

import pytest

from pruned_upstream.superb_data.arpa import (BOS, EOS, UNK, NGramModel, spelling, write_arpa,
                                              write_letter_lexicon)

WORDS = "THE CAT SAT ON A MAT DOG RAN FAST IT'S".split()


def sentences(seed: int = 0, count: int = 60) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.randint(1, 7))] for _ in range(count)]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from flashlight.lib.text.dictionary import create_word_dict, load_words
    from flashlight.lib.text.decoder import KenLM

    folder = tmp_path_factory.mktemp("lm")
    model = write_arpa(folder / "lm.arpa", sentences(), order=3)
    lexicon = write_letter_lexicon(folder / "lexicon.txt", WORDS)
    word_dict = create_word_dict(load_words(str(lexicon)))
    return model, KenLM(str(folder / "lm.arpa"), word_dict), word_dict, folder


def kenlm_log10(kenlm, word_dict, words) -> float:
    state, total = kenlm.start(False), 0.0
    for word in words:
        state, score = kenlm.score(state, word_dict.get_index(word))
        total += score
    return total + kenlm.finish(state)[1]


def test_kenlm_scores_sentences_as_we_compute_them(lm):
    model, kenlm, word_dict, _ = lm
    held_out = sentences(seed=1, count=30) + [["THE", "ZEBRA", "CAT"], ["DOG"] * 9]  # unseen n-grams, an OOV
    for words in sentences()[:30] + held_out:
        ours = model.sentence_log10(words)
        assert math.isfinite(ours)
        assert kenlm_log10(kenlm, word_dict, words) == pytest.approx(ours, abs=1e-4)


def test_every_context_distribution_sums_to_one_in_kenlm(lm):
    model, kenlm, word_dict, _ = lm
    contexts = [(), ("THE",), ("CAT", "SAT"), ("DOG", "DOG"), ("FAST", "A")]
    for context in contexts:
        state = kenlm.start(False)
        for word in context:
            state = kenlm.score(state, word_dict.get_index(word))[0]
        total = sum(10 ** kenlm.score(state, word_dict.get_index(w))[1] for w in model.vocab if w != EOS)
        total += 10 ** kenlm.finish(state)[1]
        assert total == pytest.approx(1.0, abs=1e-4), context
        assert sum(model.prob(w, (BOS, *context)) for w in model.vocab) == pytest.approx(1.0, abs=1e-9)


def test_arpa_header_counts_and_discounts(lm):
    model, _, _, folder = lm
    text = (folder / "lm.arpa").read_text()
    for n in (1, 2, 3):
        section = text.split(f"\\{n}-grams:\n")[1].split("\n\n")[0].splitlines()
        assert f"ngram {n}={len(section)}" in text
    assert f"-99.0000000\t{BOS}\t" in text and f"\t{UNK}\n" in text
    assert all(0.1 <= d <= 0.9 for d in model.discounts)


def test_lexicon_is_letters_then_word_boundary(lm):
    lines = (lm[3] / "lexicon.txt").read_text().splitlines()
    assert "CAT\tC A T |" in lines and "IT'S\tI T ' S |" in lines and len(lines) == len(set(WORDS))


@pytest.mark.parametrize("word", ["CAFÉ", "A1", "TWO WORDS", "<s>", "", "X\tY"])
def test_words_that_are_not_asr_tokens_are_refused(word, tmp_path):
    with pytest.raises(ValueError):
        write_letter_lexicon(tmp_path / "lexicon.txt", [word])
    assert not (tmp_path / "lexicon.txt").exists()


def test_a_sentence_with_a_reserved_token_is_refused():
    with pytest.raises(ValueError):
        NGramModel([["THE", "</s>", "CAT"]])
    with pytest.raises(ValueError):
        NGramModel([])
    assert spelling("it's") == ["I", "T", "'", "S", "|"]


def test_s3prl_kenlm_decoder_decodes_with_our_files(lm):
    """s3prl's W2lKenLMDecoder (asr/w2l_decoder.py), as its expert builds it, on emissions spelling a sentence."""
    import torch

    from superb_cli_helpers import s3prl_source_root

    from s3prl.downstream.asr.dictionary import Dictionary
    from s3prl.downstream.asr.expert import get_decoder

    _, _, _, folder = lm
    dictionary = Dictionary.load(str(s3prl_source_root("downstream/asr/char.dict") / "downstream/asr/char.dict"))
    args = {"decoder_type": "kenlm", "nbest": 1, "criterion": "ctc", "beam": 5, "beam_threshold": 25,
            "kenlm_model": str(folder / "lm.arpa"), "lexicon": str(folder / "lexicon.txt"), "lm_weight": 2,
            "word_score": -1, "unk_weight": "-math.inf", "sil_weight": 0}
    with pytest.raises(NameError):  # s3prl's own default: expert.py eval()s it without importing math
        get_decoder(dict(args), dictionary)
    args["unk_weight"] = -math.inf  # what run_superb.sh passes (-o ...unk_weight=-math.inf: helper.py has math)
    decoder = get_decoder(args, dictionary)
    tokens = [dictionary.index(c) for c in "THE|CAT|SAT"]
    blank = dictionary.bos()
    frames = [t for token in tokens for t in (token, blank)]
    emissions = torch.full((1, len(frames), len(dictionary)), -10.0)
    for i, token in enumerate(frames):
        emissions[0, i, token] = -0.01
    hypos = decoder.decode(emissions.contiguous())
    assert hypos[0][0]["words"] == ["THE", "CAT", "SAT"]

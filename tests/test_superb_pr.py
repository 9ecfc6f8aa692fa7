"""SUPERB PR end to end on a small espeak-ng LibriSpeech: s3prl's `-d ctc` with pr.yaml.

The corpus (pruned_upstream/superb_data/librispeech.py) is checked against
what s3prl's libriphone reader needs; one slow run trains a tiny WavLM's
downstream for a few steps through `pruned_upstream.cli superb`, evaluates the
dev-best checkpoint on test-clean, and the PER that `read_expdir` reads is
checked against the hyp/ref files s3prl wrote.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import soundfile as sf

from superb_cli_helpers import runner_overrides, s3prl_source_root

from pruned_upstream.s3prl_plugin import preflight as pf
from pruned_upstream.superb_data.librispeech import (
    ARPABET,
    READERS,
    build_librispeech,
    ipa_to_arpabet,
)

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
SIZES = {"train-clean-100": 3, "dev-clean": 2, "test-clean": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_librispeech(tmp_path_factory.mktemp("pr") / "data", per_reader=SIZES, seed=0)


def s3prl_root() -> Path:
    return s3prl_source_root("downstream/ctc/vocab/phoneme.txt")


def pr_override(corpus, *extra: str) -> str:
    """The -o a small PR run needs: data, lexicon, tiny sizes, no loader workers."""
    return ",,".join([
        *runner_overrides(STEPS, log_step=2),
        f"config.downstream_expert.corpus.path='{corpus.root}'",
        f"config.downstream_expert.corpus.lexicon=['{corpus.lexicon}']",
        "config.downstream_expert.corpus.batch_size=4", "config.downstream_expert.corpus.num_workers=0",
        "config.downstream_expert.model.project_dim=16", *extra,
    ])


# ------------------------------------------------------------------ the data

@pytest.mark.parametrize("ipa, arpabet", [
    ("wˈɔːɾɚ", "W AO1 T ER0"),  # flap -> T, r-coloured schwa -> ER0
    ("bˈʌʔn̩", "B AH1 T AH0 N"),  # glottal stop -> T, syllabic n -> AH0 N
    ("fˈoːɹ", "F AO1 R"),  # o before r is AO, as CMUdict
    ("ˈaʊɚ", "AW1 ER0"),
    ("jˈɛstɚdˌeɪ", "Y EH1 S T ER0 D EY2"),  # secondary stress
    ("tʃˈɪldɹən", "CH IH1 L D R AH0 N"),
])
def test_ipa_to_arpabet(ipa, arpabet):
    assert ipa_to_arpabet(ipa) == arpabet.split()


def test_an_unknown_ipa_symbol_is_named():
    with pytest.raises(ValueError, match="U\\+0278"):
        ipa_to_arpabet("ɸa")


def test_layout_is_librispeech(corpus):
    for split, count in SIZES.items():
        flacs = sorted((corpus.root / split).rglob("*.flac"))
        assert len(flacs) == count * len(READERS[split])
        texts = corpus.transcripts(split)
        assert sorted(texts) == [f.stem for f in flacs]
        for flac in flacs:
            speaker, chapter, utt = flac.stem.split("-")
            assert flac.parent == corpus.root / split / speaker / chapter and len(utt) == 4
            info = sf.info(str(flac))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            assert 0.5 < info.duration < 5
        for trans in (corpus.root / split).rglob("*.trans.txt"):
            text = trans.read_text()
            assert text.endswith("\n") and text == text.upper()  # libriphone drops each line's last char
            assert trans.name == f"{trans.parent.parent.name}-{trans.parent.name}.trans.txt"
    speakers = [{p.name for p in (corpus.root / s).iterdir()} for s in SIZES]
    assert not set.intersection(*speakers)  # LibriSpeech splits have disjoint speakers


def test_lexicon_covers_every_word_with_s3prl_phonemes(corpus):
    from s3prl.downstream.ctc.corpus.libriphone import parse_lexicon
    from s3prl.downstream.ctc.text import load_text_encoder

    root = s3prl_root()
    tokenizer = load_text_encoder("word", str(root / "downstream/ctc/vocab/phoneme.txt"))
    lines = corpus.lexicon.read_text().splitlines()
    entries = dict(parse_lexicon(line, tokenizer) for line in lines)  # asserts every phoneme is in the vocab
    assert all(re.fullmatch(r"[A-Z']+\t[A-Z0-2]+( [A-Z0-2]+)*", line) for line in lines)
    words = {w for split in SIZES for text in corpus.transcripts(split).values() for w in text.split()}
    assert words == set(entries)
    assert {p for phones in entries.values() for p in phones} <= ARPABET


def test_the_build_is_deterministic(corpus, tmp_path):
    again = build_librispeech(tmp_path / "again", splits=("dev-clean",), per_reader=SIZES["dev-clean"], seed=0)
    assert again.transcripts("dev-clean") == corpus.transcripts("dev-clean")
    for flac in (corpus.root / "dev-clean").rglob("*.flac"):
        assert (again.root / flac.relative_to(corpus.root)).read_bytes() == flac.read_bytes()


def test_preflight_passes_with_the_small_lexicon_override(corpus):
    root = s3prl_root()
    config = pf.effective_config("PR", root, pr_override(corpus), environ={})
    assert pf.preflight("PR", root, config) == []
    assert config["downstream_expert"]["corpus"]["lexicon"] == [str(corpus.lexicon)]


# ------------------------------------------------------------------ the run

@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    from s3prl_fixtures import make_tiny_wavlm

    from pruned_upstream import cli

    s3prl_root()
    work = tmp_path_factory.mktemp("pr_run")
    ckpt, expdir = make_tiny_wavlm(work / "tiny.pt"), work / "exp"
    train = ["superb", "-m", "train", "-u", "pruned_wavlm_local", "-k", str(ckpt), "-d", "ctc",
             "-c", str(REPO / "downstream_configs/pr.yaml"), "-o", pr_override(corpus), "-p", str(expdir)]
    codes = {"train": cli.main(train)}
    # s3prl's ctc data.py pops num_workers from the corpus config, so the saved config lacks it (12 then)
    evaluate = ["superb", "-m", "evaluate", "-e", str(expdir / "dev-best.ckpt"), "-t", "test",
                "-o", "config.downstream_expert.corpus.num_workers=0"]
    codes["evaluate"] = cli.main(evaluate)
    return expdir, codes


@pytest.mark.slow
def test_train_then_evaluate_dev_best_gives_a_per(run, corpus):
    from pruned_upstream.superb.results import read_expdir

    expdir, codes = run
    assert codes == {"train": 0, "evaluate": 0}
    assert (expdir / "dev-best.ckpt").is_file() and (expdir / f"states-{STEPS}.ckpt").is_file()
    log = (expdir / "stdout.log").read_text()
    assert f"[Runner] - Resume from {expdir / 'dev-best.ckpt'}" in log
    printed = [float(v) for v in re.findall(r"^test per: (\S+)$", log, re.M)]
    assert len(printed) == 1  # training evaluates dev only
    result = read_expdir(expdir)
    assert result.task == "PR" and set(result.metrics) == {"PR"}
    assert result.metrics["PR"] == pytest.approx(100 * printed[0])
    assert math.isfinite(result.metrics["PR"]) and result.metrics["PR"] >= 0  # PER counts insertions: may pass 100


@pytest.mark.slow
def test_hyp_and_ref_files_hold_every_test_utterance_and_give_the_per(run, corpus):
    import editdistance

    expdir, _ = run
    lexicon = dict(line.split("\t") for line in corpus.lexicon.read_text().splitlines())
    texts = corpus.transcripts("test-clean")
    hyps = dict(line.split(" ", 1) for line in (expdir / "test-hyp.ark").read_text().splitlines())
    refs = dict(line.split(" ", 1) for line in (expdir / "test-ref.ark").read_text().splitlines())
    assert len((expdir / "test-ref.ark").read_text().splitlines()) == len(texts) == len(refs) == len(hyps)
    assert set(refs) == set(texts)
    for utt, text in texts.items():  # s3prl's reference: our lexicon applied to our transcript
        assert refs[utt] == " ".join(lexicon[word] for word in text.split())
    errors = sum(editdistance.eval(hyps[u].split(" "), refs[u].split(" ")) for u in refs)
    per = errors / sum(len(refs[u].split(" ")) for u in refs)  # s3prl ctc/metric.py `per` (= wer)
    log = (expdir / "stdout.log").read_text()
    assert float(re.findall(r"^test per: (\S+)$", log, re.M)[-1]) == pytest.approx(per)

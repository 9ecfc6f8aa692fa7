"""SUPERB SF end to end on a small espeak-ng Audio SNIPS: s3prl's `-d ctc` with sf.yaml.

The corpus (pruned_upstream/superb_data/snips.py) is checked with s3prl's own
slot tokenizer; one slow run trains a tiny WavLM's downstream for a few steps
through `pruned_upstream.cli superb`, evaluates the checkpoint the protocol
picks (dev-best.ckpt, else the last states-N.ckpt as scripts/run_superb.sh
does) on test, and the slot-type F1 and slot-value CER `read_expdir` reads are
checked against s3prl's metric functions applied to the hyp/ref files it wrote.
`make test-learning` (pytest -m learning) adds a longer run (minutes) that must beat s3prl's initial
best and write dev-best.ckpt.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import soundfile as sf

from superb_cli_helpers import runner_overrides, s3prl_source_root

from pruned_upstream.s3prl_plugin import preflight as pf
from pruned_upstream.superb_data.snips import SPEAKERS, build_snips

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
SIZES = {"train": 7, "valid": 3, "test": 3}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_snips(tmp_path_factory.mktemp("sf") / "data", per_split=SIZES, seed=0)


def s3prl_root() -> Path:
    return s3prl_source_root("downstream/ctc/vocab/character.txt")


def sf_override(corpus, steps: int = STEPS, *extra: str) -> str:
    return ",,".join([
        *runner_overrides(steps, log_step=min(steps, 50)),
        f"config.downstream_expert.corpus.path='{corpus.root}'",
        f"config.downstream_expert.text.slots_file='{corpus.slots_file}'",
        "config.downstream_expert.corpus.batch_size=4", "config.downstream_expert.corpus.num_workers=0",
        "config.downstream_expert.model.project_dim=16", "config.downstream_expert.model.RNNs.dim=[16,16]", *extra,
    ])


def tokenizer(corpus):
    from s3prl.downstream.ctc.text import load_text_encoder

    vocab = s3prl_root() / "downstream/ctc/vocab/character.txt"
    return load_text_encoder("character-slot", str(vocab), str(corpus.slots_file))


def expected_ref(sentence) -> str:
    """What s3prl's slot encoder + decoder make of a sentence: values wrapped in B-/E- tokens."""
    words, i = [], 0
    while i < len(sentence.words):
        tag = sentence.tags[i]
        j = i
        while j + 1 < len(sentence.words) and tag != "O" and sentence.tags[j + 1] == tag:
            j += 1
        value = " ".join(sentence.words[i:j + 1])
        words.append(value if tag == "O" else f"B-{tag} {value} E-{tag}")
        i = j + 1
    return " ".join(words)


# ------------------------------------------------------------------ the data

def test_layout_is_s3prl_snips(corpus):
    lines = (corpus.root / "all.iob.snips.txt").read_text().splitlines()
    assert len(lines) == sum(n * len(SPEAKERS[s]) for s, n in SIZES.items())
    for line in lines:
        utt, rest = line.split(" ", 1)
        text, tags = rest.split("\t")
        speaker, snips, split, n = utt.split("-")
        assert snips == "snips" and speaker in SPEAKERS[split] and int(n) < SIZES[split]
        words, tags = text.split(" "), tags.split(" ")
        assert words[0] == "BOS" and words[-1] == "EOS" and tags[0] == "O" and len(tags) == len(words)
        assert re.fullmatch(r"[A-Z' ]+", " ".join(words[1:-1]))
        wav = corpus.root / split / f"{utt}.wav"
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16") and 0.5 < info.duration < 5
    slots = corpus.slots_file.read_text()
    assert slots.split("\n")[0] == "O" and not slots.endswith("\n")
    used = {tag for s in corpus.lines.values() for tag in s.tags}
    assert set(slots.split("\n")) == used


def test_s3prl_slot_tokenizer_reads_every_line(corpus):
    tok = tokenizer(corpus)
    for line in (corpus.root / "all.iob.snips.txt").read_text().splitlines():
        utt, sentence = line.split(" ", 1)
        ids = tok.encode(sentence)
        assert tok.unk_idx not in ids and ids[-1] == tok.eos_idx
        assert tok.decode(ids) == expected_ref(corpus.lines[utt])


def test_every_split_has_every_intent_and_slot_values(corpus):
    intents = {split: {s.intent for u, s in corpus.lines.items() if u.split("-")[2] == split} for split in SIZES}
    assert intents["test"] <= intents["train"] and intents["valid"] <= intents["train"]
    assert all(s.slot_values() for s in corpus.lines.values())  # s3prl's slot CER needs reference slots


def test_the_build_is_deterministic(corpus, tmp_path):
    again = build_snips(tmp_path, per_split={"test": SIZES["test"]}, seed=0)
    assert again.lines == {u: s for u, s in corpus.lines.items() if u.split("-")[2] == "test"}
    for utt in again.lines:
        rel = Path("test") / f"{utt}.wav"
        assert (again.root / rel).read_bytes() == (corpus.root / rel).read_bytes()


def test_preflight_passes_on_the_small_data(corpus):
    root = s3prl_root()
    config = pf.effective_config("SF", root, sf_override(corpus), environ={})
    assert pf.preflight("SF", root, config) == []


# ------------------------------------------------------------------ the run

def train_and_test(corpus, work: Path, override: str) -> tuple[Path, dict, Path]:
    """Train, then -m evaluate -t test the checkpoint the protocol picks."""
    from s3prl_fixtures import make_tiny_wavlm

    from pruned_upstream import cli

    s3prl_root()
    ckpt, expdir = make_tiny_wavlm(work / "tiny.pt"), work / "exp"
    codes = {"train": cli.main(["superb", "-m", "train", "-u", "pruned_wavlm_local", "-k", str(ckpt), "-d", "ctc",
                                "-c", str(REPO / "downstream_configs/sf.yaml"), "-o", override, "-p", str(expdir)])}
    best = expdir / "dev-best.ckpt"
    states = sorted(expdir.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    picked = best if best.is_file() else states[-1]
    # s3prl's ctc data.py pops num_workers from the corpus config, so the saved config lacks it (12 then)
    codes["evaluate"] = cli.main(["superb", "-m", "evaluate", "-e", str(picked), "-t", "test",
                                  "-o", "config.downstream_expert.corpus.num_workers=0"])
    return expdir, codes, picked


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    return train_and_test(corpus, tmp_path_factory.mktemp("sf_run"), sf_override(corpus))


def printed(expdir: Path, name: str) -> list[float]:
    return [float(v) for v in re.findall(rf"^{name}: (\S+)$", (expdir / "stdout.log").read_text(), re.M)]


@pytest.mark.slow
def test_train_then_evaluate_gives_slot_f1_and_cer(run):
    from pruned_upstream.superb.results import read_expdir

    expdir, codes, picked = run
    assert codes == {"train": 0, "evaluate": 0}
    dev = printed(expdir, "dev slot_type_f1")
    assert len(dev) == 1
    # s3prl's ctc expert saves dev-best.ckpt only when dev slot_type_f1 > its initial best, 0
    assert (expdir / "dev-best.ckpt").is_file() == (max(dev) > 0)
    assert f"[Runner] - Resume from {picked}" in (expdir / "stdout.log").read_text()
    f1, cer = printed(expdir, "test slot_type_f1"), printed(expdir, "test slot_value_cer")
    assert len(f1) == len(cer) == 1
    result = read_expdir(expdir)
    assert result.task == "SF"
    assert result.metrics == pytest.approx({"SF-F1": 100 * f1[0], "SF-CER": 100 * cer[0]})
    assert 0 <= result.metrics["SF-F1"] <= 100 and math.isfinite(cer[0]) and cer[0] >= 0


@pytest.mark.slow
def test_hyp_and_ref_files_hold_every_test_utterance_and_give_the_metrics(run, corpus):
    from s3prl.downstream.ctc.metric import slot_type_f1, slot_value_cer

    expdir, _, _ = run
    test_ids = corpus.split_ids("test")
    hyp_lines = (expdir / "test-hyp.ark").read_text().splitlines()
    ref_lines = (expdir / "test-ref.ark").read_text().splitlines()
    assert len(hyp_lines) == len(ref_lines) == len(test_ids)
    refs = dict(line.split(" ", 1) for line in ref_lines)
    hyps = dict((line + " ").split(" ", 1) for line in hyp_lines)
    assert sorted(refs) == test_ids
    assert all(refs[u] == expected_ref(corpus.lines[u]) for u in test_ids)
    ids = sorted(refs)
    hyp = [hyps[u][:-1] for u in ids]  # the " " appended above
    ref = [refs[u] for u in ids]
    assert printed(expdir, "test slot_type_f1")[-1] == pytest.approx(slot_type_f1(hyp, ref))
    assert printed(expdir, "test slot_value_cer")[-1] == pytest.approx(slot_value_cer(hyp, ref))


@pytest.mark.slow
@pytest.mark.learning  # a measurement of minutes: `make test-learning`
def test_a_longer_run_beats_s3prl_initial_best_and_writes_dev_best(corpus, tmp_path):
    """Measured once for docs/tasks/sf.md: learnable slots, best checkpoint written."""
    steps = 600
    override = sf_override(corpus, steps, "config.runner.eval_step=100", "config.optimizer.lr=1.0e-2",
                           "config.specaug=None", "config.downstream_expert.model.project_dim=64",
                           "config.downstream_expert.model.RNNs.dim=[64,64]")
    expdir, codes, picked = train_and_test(corpus, tmp_path, override)
    assert codes == {"train": 0, "evaluate": 0} and picked.name == "dev-best.ckpt"
    dev, f1 = printed(expdir, "dev slot_type_f1"), printed(expdir, "test slot_type_f1")
    cer = printed(expdir, "test slot_value_cer")
    print(f"dev slot_type_f1 per 100 steps: {dev}; test slot_type_f1 / slot_value_cer of dev-best.ckpt: {f1} / {cer}")
    assert max(dev) > 0

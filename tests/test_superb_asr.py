"""SUPERB ASR end to end on a small espeak-ng LibriSpeech: s3prl's `-d asr` with asr.yaml.

The length tables are checked byte for byte against s3prl's own
preprocess/generate_len_for_bucket.py; one slow run trains a tiny WavLM's
downstream for a few steps through `pruned_upstream.cli superb`, evaluates the
checkpoint the protocol picks (dev-clean-best.ckpt, else the last states-N.ckpt
as scripts/run_superb.sh does) on test-clean, and the WER `read_expdir` reads is
checked against the hyp/ref files s3prl wrote. `make test-learning` (pytest -m learning) adds a longer
run (minutes) that must beat s3prl's initial best and write dev-clean-best.ckpt.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from superb_cli_helpers import runner_overrides, s3prl_source_root

from pruned_upstream.s3prl_plugin import preflight as pf
from pruned_upstream.superb_data.librispeech import DEFAULT_SPLITS, build_librispeech

STEPS = 4
SIZES = {"train-clean-100": 3, "dev-clean": 2, "test-clean": 2}
SPLIT_INDEX = {"train-clean-100": 0, "dev-clean": 3, "test-clean": 5}  # the script's menu (its SETS list)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_librispeech(tmp_path_factory.mktemp("asr") / "data", per_reader=SIZES, seed=0)


def s3prl_root() -> Path:
    return s3prl_source_root("downstream/asr/char.dict")


def asr_override(corpus, steps: int = STEPS, *extra: str) -> str:
    return ",,".join([
        *runner_overrides(steps, log_step=min(steps, 50)),
        f"config.downstream_expert.datarc.libri_root='{corpus.root}'",
        f"config.downstream_expert.datarc.bucket_file='{corpus.bucket_dir}'",
        "config.downstream_expert.datarc.batch_size=4", "config.downstream_expert.datarc.num_workers=0",
        "config.downstream_expert.modelrc.project_dim=16", "config.downstream_expert.modelrc.RNNs.dim=[16,16]", *extra,
    ])


# ------------------------------------------------------------------ the data

def test_length_tables_have_s3prl_columns_and_order(corpus):
    for split in DEFAULT_SPLITS:
        lines = (corpus.bucket_dir / f"{split}.csv").read_text().splitlines()
        assert lines[0] == ",file_path,length,label"
        rows = [line.split(",") for line in lines[1:]]
        assert [int(r[0]) for r in rows] == list(range(len(rows))) and all(r[3] == "" for r in rows)
        assert {r[1] for r in rows} == {str(p.relative_to(corpus.root)) for p in (corpus.root / split).rglob("*.flac")}
        lengths = [int(r[2]) for r in rows]
        assert lengths == sorted(lengths, reverse=True)
        assert lengths == [sf.info(str(corpus.root / r[1])).frames for r in rows]


def test_length_tables_equal_what_s3prl_script_writes(corpus, tmp_path):
    script = s3prl_source_root("preprocess/generate_len_for_bucket.py") / "preprocess/generate_len_for_bucket.py"
    menu = " ".join(str(SPLIT_INDEX[s]) for s in DEFAULT_SPLITS)  # the script asks on stdin
    proc = subprocess.run([sys.executable, str(script), "-i", str(corpus.root), "-o", str(tmp_path), "-a", ".flac",
                           "--n_jobs", "1"], input=menu + "\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for split in DEFAULT_SPLITS:
        ours, theirs = corpus.bucket_dir / f"{split}.csv", tmp_path / "len_for_bucket" / f"{split}.csv"
        assert theirs.read_bytes() == ours.read_bytes()


def test_preflight_passes_on_the_small_data(corpus):
    root = s3prl_root()
    config = pf.effective_config("ASR", root, asr_override(corpus), environ={})
    assert pf.preflight("ASR", root, config) == []


# ------------------------------------------------------------------ the runs

def train_and_test(corpus, work: Path, override: str) -> tuple[Path, dict, Path]:
    """Train, then -m evaluate -t test-clean the checkpoint the protocol picks."""
    from s3prl_fixtures import make_tiny_wavlm

    from pruned_upstream import cli

    s3prl_root()
    ckpt, expdir = make_tiny_wavlm(work / "tiny.pt"), work / "exp"
    codes = {"train": cli.main(["superb", "-m", "train", "-u", "pruned_wavlm_local", "-k", str(ckpt),
                                "-d", "asr", "-o", override, "-p", str(expdir)])}
    best = expdir / "dev-clean-best.ckpt"
    states = sorted(expdir.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    picked = best if best.is_file() else states[-1]
    codes["evaluate"] = cli.main(["superb", "-m", "evaluate", "-e", str(picked), "-t", "test-clean"])
    return expdir, codes, picked


def printed(expdir: Path, name: str) -> list[float]:
    return [float(v) for v in re.findall(rf"^{name}: (\S+)$", (expdir / "stdout.log").read_text(), re.M)]


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    return train_and_test(corpus, tmp_path_factory.mktemp("asr_run"), asr_override(corpus))


@pytest.mark.slow
def test_train_then_evaluate_gives_a_test_clean_wer(run):
    from pruned_upstream.superb.results import read_expdir

    expdir, codes, picked = run
    assert codes == {"train": 0, "evaluate": 0}
    dev = printed(expdir, "dev-clean wer")
    assert len(dev) == 1
    # s3prl's asr expert saves dev-clean-best.ckpt only when dev WER < its initial best, 100
    assert (expdir / "dev-clean-best.ckpt").is_file() == (min(dev) < 100)
    assert f"[Runner] - Resume from {picked}" in (expdir / "stdout.log").read_text()
    test = printed(expdir, "test-clean wer")
    assert len(test) == 1
    result = read_expdir(expdir)
    assert result.task == "ASR" and result.metrics["ASR"] == pytest.approx(test[0])  # already percent
    assert math.isfinite(test[0]) and test[0] >= 0


@pytest.mark.slow
def test_hyp_and_ref_files_hold_every_test_utterance_and_give_the_wer(run, corpus):
    import editdistance

    expdir, _, _ = run
    texts = corpus.transcripts("test-clean")
    hyp_lines = (expdir / "test-clean-noLM-hyp.ark").read_text().splitlines()
    ref_lines = (expdir / "test-clean-noLM-ref.ark").read_text().splitlines()
    assert len(hyp_lines) == len(ref_lines) == len(texts)
    refs = dict(line.split(" ", 1) for line in ref_lines)
    hyps = dict((line + " ").split(" ", 1) for line in hyp_lines)  # an empty hypothesis is "<id> "
    assert refs == texts  # s3prl's reference words are our transcripts
    errors = sum(editdistance.eval(hyps[u].split(), refs[u].split()) for u in refs)
    wer = 100.0 * errors / sum(len(refs[u].split()) for u in refs)  # s3prl asr/expert.py _compute_metrics
    assert printed(expdir, "test-clean wer")[-1] == pytest.approx(wer)


@pytest.mark.slow
@pytest.mark.learning  # a measurement of minutes: `make test-learning`
def test_a_longer_run_beats_s3prl_initial_best_and_writes_dev_clean_best(corpus, tmp_path):
    """Measured once for docs/tasks/asr.md: learnable labels, best checkpoint written."""
    steps = 300
    override = asr_override(corpus, steps, "config.runner.eval_step=50", "config.optimizer.lr=1.0e-2",
                            "config.specaug=None", "config.downstream_expert.modelrc.project_dim=64",
                            "config.downstream_expert.modelrc.RNNs.dim=[64,64]")
    expdir, codes, picked = train_and_test(corpus, tmp_path, override)
    assert codes == {"train": 0, "evaluate": 0} and picked.name == "dev-clean-best.ckpt"
    dev, test = printed(expdir, "dev-clean wer"), printed(expdir, "test-clean wer")
    print(f"dev-clean wer per 50 steps: {dev}; test-clean wer of dev-clean-best.ckpt: {test}")
    assert min(dev) < 100


# ------------------------------------------------------------------ ASR with a language model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_superb.sh"


def test_small_data_writes_an_lm_of_the_training_text_and_a_letter_lexicon(corpus):
    from pruned_upstream.superb_data.arpa import NGramModel

    train = list(corpus.transcripts("train-clean-100").values())
    model = NGramModel([t.split() for t in train], order=3)
    assert corpus.lm.read_text() == model.arpa_text()  # the training transcripts only
    lexicon = dict(line.split("\t") for line in corpus.lm_lexicon.read_text().splitlines())
    words = {w for split in DEFAULT_SPLITS for t in corpus.transcripts(split).values() for w in t.split()}
    assert set(lexicon) == words and all(lexicon[w] == " ".join(w) + " |" for w in words)


def lm_env(tmp_path: Path, model: Path, lexicon: Path) -> dict:
    import os

    return {"PATH": os.environ["PATH"], "DRY_RUN": "1", "PRUNED_UPSTREAM": "pruned-upstream", "PYTHON": sys.executable,
            "LIBRISPEECH_ROOT": str(tmp_path), "LIBRISPEECH_BUCKET_DIR": str(tmp_path),
            "ASR_KENLM_MODEL": str(model), "ASR_LEXICON": str(lexicon)}


def test_lm_paths_reach_s3prl_as_one_string_each(tmp_path, monkeypatch):
    """A hostile LM path (quote, ',,', '=', code) goes into -o as a literal s3prl's own parser keeps whole."""
    import argparse

    from s3prl.utility.helper import override as s3prl_override

    folder = tmp_path / "x',,config.a=__import__('os').system('touch MARKER')#"
    folder.mkdir()
    model, lexicon = folder / "lm.arpa", folder / "lex'=.txt"
    model.write_text("x"), lexicon.write_text("x")
    (tmp_path / "ck.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "ck.pt"), str(tmp_path / "out"), "ASR"],
                          env=lm_env(tmp_path, model, lexicon), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import shlex
    runs = [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]
    evaluate = [r for r in runs if r[1:4] == ["superb", "-m", "evaluate"]]
    assert len(evaluate) == 2 and "-o" not in evaluate[0]  # no LM, then with the LM
    args, config = argparse.Namespace(), {}
    s3prl_override(evaluate[1][evaluate[1].index("-o") + 1], args, config)
    decoder = config["downstream_expert"]["datarc"]["decoder_args"]
    assert decoder == {"decoder_type": "kenlm", "kenlm_model": str(model), "lexicon": str(lexicon),
                       "unk_weight": -math.inf}
    assert vars(args) == {"expdir": str(tmp_path / "out" / "ASR" / "LM")} and list(config) == ["downstream_expert"]
    assert not (tmp_path / "MARKER").exists()
    assert ["cp", "--", str(tmp_path / "out/ASR/LM/test-clean-LM-hyp.ark"),
            str(tmp_path / "out/ASR/test-clean-LM-hyp.ark")] in runs


def test_a_missing_lexicon_fails_the_lm_test(tmp_path):
    (tmp_path / "ck.pt").write_bytes(b"x")
    (tmp_path / "lm.arpa").write_text("x")
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "ck.pt"), str(tmp_path / "out"), "ASR"],
                          env=lm_env(tmp_path, tmp_path / "lm.arpa", tmp_path / "none.txt"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "ASR_LEXICON" in proc.stderr and "failed: ASR" in proc.stdout


@pytest.mark.slow
def test_lm_test_writes_its_hypotheses_and_submit_packs_them(run, corpus, tmp_path):
    """run_superb.sh's test_asr_lm on the trained small run, then `submit`'s plan takes asr_with_lm."""
    import shutil
    import zipfile

    from pruned_upstream.superb.submission import plan_submission, write_predict_zip

    expdir, _, _ = run
    results = tmp_path / "results"
    shutil.copytree(expdir, results / "ASR")
    no_lm = printed(results / "ASR", "test-clean wer")
    script = (f"source {shlex_quote(SCRIPT)}; CLI=({shlex_quote(sys.executable)} -m pruned_upstream.cli); "
              f"PYTHON={shlex_quote(sys.executable)}; OUT={shlex_quote(results)}; test_asr_lm \"$OUT/ASR\"")
    env = {**__import__("os").environ, "ASR_KENLM_MODEL": str(corpus.lm), "ASR_LEXICON": str(corpus.lm_lexicon)}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hyps = (results / "ASR" / "test-clean-LM-hyp.ark").read_text().splitlines()
    assert {line.split(" ", 1)[0] for line in hyps} == set(corpus.transcripts("test-clean"))
    lm_words = {line.split("\t")[0] for line in corpus.lm_lexicon.read_text().splitlines()}
    assert all(w in lm_words for line in hyps for w in line.split()[1:])  # lexicon-constrained decoding
    assert printed(results / "ASR", "test-clean wer") == no_lm  # the no-LM score is what `score` still reads
    assert len(printed(results / "ASR" / "LM", "test-clean wer")) == 1
    plan = plan_submission(results)
    assert "asr_with_lm" in plan.entries and "asr_no_lm" in plan.entries
    write_predict_zip(plan, tmp_path / "predict.zip")
    with zipfile.ZipFile(tmp_path / "predict.zip") as archive:
        assert archive.read("predict/asr_lm_public/predict.ark").decode().splitlines() == hyps


def shlex_quote(value) -> str:
    import shlex

    return shlex.quote(str(value))

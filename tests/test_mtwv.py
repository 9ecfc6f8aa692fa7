"""Our QUESST 2014 TWV/MTWV (pruned_upstream/superb/mtwv.py) on hand-worked cases.

Notation: Q scored queries (those with an occurrence), N utterances,
N_true(q) utterances holding q. Lowering the threshold past one trial changes
TWV by +1 / (Q * N_true(q)) for a hit and by -beta / (Q * (N - N_true(q))) for
a false alarm, so TWV(theta) is the sum of those steps over the trials
scoring >= theta (TWV(+inf) = 0).
"""

from __future__ import annotations

import math

import pytest

from pruned_upstream.cli import main
from pruned_upstream.superb import mtwv
from pruned_upstream.superb.mtwv import GroundTruth, twv
from pruned_upstream.superb.results import read_expdir
from pruned_upstream.superb.s3prl_logs import QBE_OURS_LOG, is_our_mtwv

UTTS = ("u1", "u2", "u3", "u4")
# q1 occurs in u1; q2 in u2 and u3.  N = 4, N_true(q1) = 1, N_true(q2) = 2, Q = 2.
TRUTH = GroundTruth(("q1", "q2"), UTTS, frozenset({("q1", "u1"), ("q2", "u2"), ("q2", "u3")}))
# (score, decision YES); (q1, u4) is missing from the system output: default score -10, NO.
TRIALS = {
    ("q1", "u1"): (3.0, True), ("q1", "u2"): (1.0, False), ("q1", "u3"): (2.5, True),
    ("q2", "u1"): (0.5, False), ("q2", "u2"): (2.0, True), ("q2", "u3"): (0.2, False), ("q2", "u4"): (1.5, True),
}


def test_beta_from_the_quesst_costs():
    # (C_FA / C_miss) * (1 - P_target) / P_target = (1 / 100) * 0.9992 / 0.0008 = 12.49
    assert mtwv.beta() == pytest.approx(12.49)
    assert mtwv.beta(c_miss=1, c_fa=1, p_target=0.5) == pytest.approx(1.0)


def test_two_queries_with_quesst_beta():
    # beta = 12.49. Steps, trials in decreasing score (each divided by Q = 2):
    #   3.0 (q1,u1) hit  +1            -> TWV = 0.5
    #   2.5 (q1,u3) FA   -12.49/3      -> (1 - 4.163333) / 2 = -1.581667
    #   2.0 (q2,u2) hit  +1/2          -> -1.331667 ... every later point is lower than 0.5
    # MTWV = 0.5 at threshold 3.0 (q1 perfect: 0; q2 all missed: P_miss = 1 -> 1 - 1/2).
    # ATWV (YES: (q1,u1) hit, (q1,u3) FA, (q2,u2) hit, (q2,u4) FA):
    #   q1: P_miss 0, P_FA 1/3 -> 12.49/3 = 4.163333;  q2: P_miss 1/2, P_FA 1/2 -> 0.5 + 6.245 = 6.745
    #   ATWV = 1 - (4.163333 + 6.745) / 2 = -4.454167
    result = twv(TRUTH, TRIALS)
    assert result.max_twv == pytest.approx(0.5)
    assert result.threshold == 3.0
    assert result.act_twv == pytest.approx(1 - (12.49 / 3 + 0.5 + 12.49 / 2) / 2)
    assert result.act_twv == pytest.approx(-4.4541667, abs=1e-6)
    assert (result.n_terms_scored, result.n_utterances, result.n_trials_given) == (2, 4, 7)


def test_threshold_sweep_with_beta_one():
    # beta = 1: hit(q1) +1, FA(q1) -1/3, hit(q2) +1/2, FA(q2) -1/2, all divided by Q = 2.
    #   theta  3.0: (1) / 2                 = 0.5
    #   theta  2.5: (1 - 1/3) / 2           = 0.333333
    #   theta  2.0: (1 - 1/3 + 1/2) / 2     = 0.583333   <- the maximum
    #   theta  1.5: (7/6 - 1/2) / 2         = 0.333333
    #   theta  1.0: (2/3 - 1/3) / 2         = 0.166667
    #   theta  0.5: (1/3 - 1/2) / 2         = -0.083333
    #   theta  0.2: (-1/6 + 1/2) / 2        = 0.166667
    #   theta -10 : (1/3 - 1/3) / 2         = 0   (the missing (q1,u4) trial, a false alarm)
    # Check at 2.0 directly: q1 P_miss 0, P_FA 1/3; q2 P_miss 1/2, P_FA 0: 1 - (1/3 + 1/2)/2 = 7/12.
    result = twv(TRUTH, TRIALS, weight=1.0)
    assert result.max_twv == pytest.approx(7 / 12)
    assert result.threshold == 2.0


def test_ties_move_together_and_queries_without_occurrence_are_not_scored():
    # q3 never occurs: left out (Q = 2). q1's hit and q2's false alarm tie at 5.0, so no
    # threshold detects one without the other. beta = 1; steps +1 (q1 hit), -1/3 (q1 FA),
    # +1/2 (q2 hit), -1/2 (q2 FA), each divided by Q = 2:
    #   theta 5.0: (1 - 1/2) / 2            = 0.25  (q1 hit u1 and q2 FA u1 together)
    #   theta 4.0: (1/2 + 1/2) / 2          = 0.5   (q2 hit u2)
    #   theta 3.0: (1 + 1/2) / 2            = 0.75  (q2 hit u3)   <- the maximum
    #   theta -10: (3/2 - 3 * 1/3 - 1/2) / 2 = 0    (missing trials: q1 FA u2, u3, u4; q2 FA u4)
    # Check at 3.0 directly: q1: 0 + 0; q2: P_miss 0, P_FA 1/2: TWV = 1 - (1/2) / 2 = 0.75.
    truth = GroundTruth(("q1", "q2", "q3"), UTTS, frozenset({("q1", "u1"), ("q2", "u2"), ("q2", "u3")}))
    trials = {("q1", "u1"): (5.0, False), ("q2", "u1"): (5.0, False), ("q2", "u2"): (4.0, False),
              ("q2", "u3"): (3.0, False), ("q3", "u1"): (9.0, True)}
    result = twv(truth, trials, weight=1.0)
    assert result.n_terms_scored == 2
    assert result.max_twv == pytest.approx(0.75)
    assert result.threshold == 3.0
    assert result.act_twv == 0.0  # q3's YES is not scored; no other YES


def test_nothing_worth_detecting_gives_zero_at_infinite_threshold():
    # Every trial above the default score is a false alarm: any finite threshold costs, so the
    # best is to detect nothing: TWV(+inf) = 1 - (1 + 0) = 0 per query.
    trials = {("q1", "u2"): (1.0, True), ("q2", "u1"): (0.5, False)}
    result = twv(TRUTH, trials)
    assert result.max_twv == 0.0 and math.isinf(result.threshold)
    # ATWV: q1 misses u1 (P_miss 1) and has one FA of 3 (12.49/3); q2 misses both (1).
    assert result.act_twv == pytest.approx(1 - (1 + 12.49 / 3 + 1) / 2)


def test_perfect_system_scores_one():
    trials = {(q, u): (1.0 if (q, u) in TRUTH.occurrences else -1.0, (q, u) in TRUTH.occurrences)
              for q in TRUTH.terms for u in UTTS}
    result = twv(TRUTH, trials)
    assert result.max_twv == pytest.approx(1.0) and result.act_twv == pytest.approx(1.0)


def test_no_query_occurs_is_an_error():
    with pytest.raises(ValueError, match="undefined"):
        twv(GroundTruth(("q1",), UTTS, frozenset()), {})


STDLIST = """<stdlist termlist_filename="benchmark.stdlist.xml" indexing_time="1.00" language="english" index_size="1" system_id="benchmark">
  <detected_termlist termid="q1" term_search_time="1.0" oov_term_count="1">
    <term file="u1" channel="1" tbeg="0.000" dur="0.00" score="3.0000" decision="YES"/>
    <term file="u2" channel="1" tbeg="0.000" dur="0.00" score="1.0000" decision="NO"/>
    <term file="u3" channel="1" tbeg="0.000" dur="0.00" score="2.5000" decision="YES"/>
  </detected_termlist>
  <detected_termlist termid="q2" term_search_time="1.0" oov_term_count="1">
    <term file="u1" channel="1" tbeg="0.000" dur="0.00" score="0.5000" decision="NO"/>
    <term file="u2" channel="1" tbeg="0.000" dur="0.00" score="2.0000" decision="YES"/>
    <term file="u3" channel="1" tbeg="0.000" dur="0.00" score="0.2000" decision="NO"/>
    <term file="u4" channel="1" tbeg="0.000" dur="0.00" score="1.5000" decision="YES"/>
  </detected_termlist>
</stdlist>
"""


def write_groundtruth(directory):
    directory.mkdir()
    (directory / "x.ecf.xml").write_text('<ecf source_signal_duration="4" version="t">' + "".join(
        f'<excerpt audio_filename="Audio/{u}.wav" channel="1" tbeg="0" dur="1"/>' for u in UTTS) + "</ecf>")
    (directory / "x.tlist.xml").write_text('<termlist ecf_filename="x.ecf.xml" version="t">'
                                           '<term termid="q1"><termtext>q1</termtext></term>'
                                           '<term termid="q2"><termtext>q2</termtext></term></termlist>')
    (directory / "x.rttm").write_text("LEXEME u1 1 0.500 0.300 q1 lex <NA> <NA>\n"
                                      "LEXEME u2 1 0.100 0.300 q2 lex <NA> <NA>\n"
                                      "LEXEME u3 1 1.000 0.300 q2 lex <NA> <NA>\n"
                                      "LEXEME u4 1 0.000 1.000 NO_KEYWORD lex <NA> <NA>\n")
    return directory


def test_files_s3prl_writes_and_the_reader(tmp_path):
    """The stdlist in s3prl's format, the ground truth files, our log, and results' reader."""
    truth = mtwv.read_groundtruth(write_groundtruth(tmp_path / "gt"))
    assert truth == TRUTH
    expdir = tmp_path / "QbE_dev_layer0"
    expdir.mkdir()
    (expdir / mtwv.STDLIST).write_text(STDLIST)
    assert mtwv.read_stdlist(expdir / mtwv.STDLIST) == TRIALS
    result = mtwv.score_expdir(expdir, tmp_path / "gt")
    assert result.max_twv == pytest.approx(0.5)
    assert mtwv.OURS_LOG == QBE_OURS_LOG
    log = (expdir / mtwv.OURS_LOG).read_text()
    assert "not QUESST14's official scorer" in log and "maxTWV: 0.50000000  Threshold: 3.0000" in log
    # an s3prl args file makes it an expdir of quesst14_dtw, dev split, layer 0
    (expdir / "args_2024-01-01-00-00-00.yaml").write_text(
        "downstream: quesst14_dtw\nevaluate_split: dev\nupstream_layer_selection: 0\n")
    run = read_expdir(expdir)
    assert run.task == "QbE" and run.split == "dev" and run.layer == 0
    assert run.metrics["QbE"] == pytest.approx(50.0)  # MTWV x 100
    assert is_our_mtwv(run.sources["QbE"])
    # the official scorer's log, when present, wins and is not marked as ours
    (expdir / "score_twv.log").write_text("actTWV: 0.1  maxTWV: 0.2  Threshold: 1.0\n")
    run = read_expdir(expdir)
    assert run.metrics["QbE"] == pytest.approx(20.0) and not is_our_mtwv(run.sources["QbE"])


def test_cli_prints_the_label(tmp_path, capsys):
    write_groundtruth(tmp_path / "gt")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / mtwv.STDLIST).write_text(STDLIST)
    assert main(["superb-step", "mtwv", str(tmp_path / "exp"), str(tmp_path / "gt")]) == 0
    out = capsys.readouterr().out
    assert "maxTWV: 0.50000000" in out and "(ours)" in out
    assert main(["superb-step", "mtwv", str(tmp_path / "nothing"), str(tmp_path / "gt")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "benchmark.stdlist.xml is missing" in err
    (tmp_path / "exp" / mtwv.STDLIST).write_text(STDLIST[: len(STDLIST) // 2])  # truncated XML
    assert main(["superb-step", "mtwv", str(tmp_path / "exp"), str(tmp_path / "gt")]) == 1
    assert "unreadable XML" in capsys.readouterr().err


def test_the_score_table_marks_our_mtwv(tmp_path, capsys):
    """A model whose QbE comes from our scorer: QbE* in the table, the note under it, "ours" in JSON."""
    import json

    from pruned_upstream.commands.score import run_score

    write_groundtruth(tmp_path / "gt")
    model = tmp_path / "model"
    for layer, split in ((0, "dev"), (0, "test")):
        expdir = model / f"QbE_{split}_layer{layer}"
        expdir.mkdir(parents=True)
        (expdir / mtwv.STDLIST).write_text(STDLIST)
        mtwv.score_expdir(expdir, tmp_path / "gt")
        (expdir / "args_2024-01-01-00-00-00.yaml").write_text(
            f"downstream: quesst14_dtw\nevaluate_split: {split}\nupstream_layer_selection: {layer}\n")
    assert run_score(str(model), allow_missing=True) == 0
    table = capsys.readouterr().out.splitlines()
    assert "QbE*" in table[1].split() and table[-1].startswith("QbE*: MTWV computed by our re-implementation")
    assert run_score(str(model), allow_missing=True, as_json=True) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["qbe_scorer"] == "ours" and row["points"]["QbE"] > 0
    (model / "QbE_test_layer0" / "score_twv.log").write_text("actTWV: 0.1  maxTWV: 0.2  Threshold: 1.0\n")
    assert run_score(str(model), allow_missing=True, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)[0]["qbe_scorer"] == "official"  # the test run's scorer decides

"""The demo's claim, on a shortened run: the pre-trained teacher knows speech, and pruning keeps it.

The demo's own steps (corpus, pre-training, distillation with pruning, export, the magnitude baseline),
then only what is stable from run to run (docs/superb_small_data.md, "What pruning keeps"): KS through
s3prl's runner for the random and the pre-trained teacher at s3prl's default seed (the gap was 21 to 37
points over the seeds measured), and how far each pruned model's hidden states are from the teacher's
on the corpus (deterministic: no downstream training in between)."""

from __future__ import annotations

import json
import threading

import pytest

from pruned_upstream import load_model


@pytest.mark.slow
def test_pretrained_teacher_beats_the_random_one_and_pruning_keeps_more_than_magnitude(tmp_path):
    from pruned_upstream.analysis.probes import final_state, load_audio_sample, relative_l2
    from pruned_upstream.analysis.similarity import linear_cka
    from pruned_upstream.demo import export_models, magnitude_baseline, make_corpus, pretrain_teacher, prune
    from pruned_upstream.demo_superb import fork_server, run_upstream
    from pruned_upstream.superb.results import read_results
    from pruned_upstream.superb_data.bundle import make_small_superb

    out = tmp_path
    manifest = make_corpus(out)
    random_path, teacher_path, stats = pretrain_teacher(out, manifest, quick=False)
    for it in stats["iterations"]:  # the masked frames' cluster labels are learnt, both iterations
        assert it["last_loss"] < 0.5 * it["chance_loss"], it
    assert json.loads((out / "pretrain.json").read_text())["iterations"] == stats["iterations"]
    assert pretrain_teacher(out, manifest, quick=False)[2]["seconds"] == stats["seconds"]  # cached, not trained again

    run_dir = prune(out, manifest, quick=False, teacher=teacher_path)
    model_path, teacher_file, summary = export_models(out, run_dir)
    assert abs(summary["sparsity"] - summary["target_sparsity"]) < 0.03
    magnitude_path = magnitude_baseline(out, model_path, teacher_file)
    teacher, pruned, magnitude = (load_model(p) for p in (teacher_file, model_path, magnitude_path))
    assert magnitude.num_params() == pruned.num_params() < teacher.num_params()

    audio = load_audio_sample(manifest.parent / "wavs", max_files=32, max_seconds=4.0)
    models = {"teacher": teacher, "pruned": pruned, "magnitude": magnitude}
    final = {name: final_state(m, audio) for name, m in models.items()}
    distance = {n: relative_l2(final[n], final["teacher"]) for n in ("pruned", "magnitude")}
    # measured: 0.087 and 0.40; CKA 0.998 and 0.965
    assert distance["pruned"] < 0.5 * distance["magnitude"], distance
    assert linear_cka(final["pruned"], final["teacher"]) > linear_cka(final["magnitude"], final["teacher"])

    bundle = make_small_superb(out / "superb_data", seed=0, steps=40)
    results = {}
    with fork_server(out) as server:
        def ks(name, ckpt):
            run_upstream(name, ckpt, out / "superb" / name, bundle, ["KS"], "0,4", server)
            results[name] = read_results(out / "superb" / name / "scored" / name)[0].metrics["KS"]

        threads = [threading.Thread(target=ks, args=item) for item in
                   (("random", random_path), ("teacher", teacher_path))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results["teacher"] >= results["random"] + 15, results

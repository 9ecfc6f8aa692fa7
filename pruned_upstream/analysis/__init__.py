"""Measurements on audio: which layers matter, and which to drop.

    analysis.similarity    linear CKA and SVCCA of two feature matrices
    analysis.probes        hidden states over a sample of audio; distortion of the final states
    analysis.layer_choice  importance:K, and the truncation / uniform / importance comparison
    analysis.layer_report  the per-layer table and figures of `pruned-upstream analyze`
    analysis.magnitude     the baseline: a dense model cut to a pruned model's counts by weight magnitude
"""

"""Audio in: reading and checking files, manifests, the training dataset and sampler, synthetic speech.

    data.audio        read, check, resample and write audio files
    data.manifest     directories and fairseq manifests -> usable files, counted by reason
    data.dataset      randomly cropped utterances for distillation, and their collate
    data.sampler      bucketed, resumable, DDP-sharded batches
    data.speech       words and sentences spoken by espeak-ng
    data.demo_corpus  the demo's corpus and its Speech Commands layout
"""

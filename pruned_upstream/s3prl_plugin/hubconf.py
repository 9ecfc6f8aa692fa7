"""s3prl hub entries; `pruned-upstream superb` adds them to `s3prl.hub` at run time."""

from __future__ import annotations

import os

from .expert import UpstreamExpert


def pruned_wavlm_local(ckpt: str, *args, **kwargs) -> UpstreamExpert:
    """A local model file (our .safetensors, an original WavLM .pt) or a Hugging Face directory."""
    if not os.path.exists(ckpt):
        raise FileNotFoundError(f"upstream checkpoint not found: {ckpt}")
    return UpstreamExpert(ckpt, *args, **kwargs)

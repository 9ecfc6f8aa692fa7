"""Our model as an s3prl upstream (s3prl's `UpstreamExpert` contract).

    upstream = UpstreamExpert("model.safetensors")
    upstream([wav1, wav2])["hidden_states"]   # list of (B, T', D), the same count on every call

Any file `load_model` reads works as `ckpt`, of any family (WavLM, HuBERT,
wav2vec 2.0): our compact `.safetensors`, an original release `.pt` (fairseq's
too), s3prl's converted checkpoints, a Hugging Face directory. Imports only torch and our model
code: a user running SUPERB never imports the trainer.

Fine-tuning (s3prl's `-f`) behaves as through s3prl's own experts: the CNN gets no
gradient, no layer is dropped, and the file's dropout rates apply in train mode
(a release's configuration, a Hugging Face config.json, or the rates our export
recorded from the teacher; none for our files without them). docs/s3prl.md.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ..checkpoints import load_model
from ..model.dropout import finetune_like_s3prl


def _read_model_config(path: str | None) -> dict:
    """The optional `-g` model config: a YAML mapping (e.g. `drop_layers: [9, 10, 11]`)."""
    if not path:
        return {}
    from ..small_files import read_yaml_file

    config = read_yaml_file(path) or {}  # regular, bounded, no YAML aliases
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the upstream model config must be a YAML mapping")
    unknown = set(config) - {"drop_layers"}
    if unknown:
        raise ValueError(f"{path}: unknown upstream options {sorted(unknown)} (known: drop_layers)")
    return config


class UpstreamExpert(nn.Module):
    def __init__(self, ckpt: str, model_config: str | None = None, **kwargs):
        super().__init__()
        config = _read_model_config(model_config)
        self.model = load_model(ckpt, drop_layers=config.get("drop_layers"))
        # As s3prl's wavlm / hubert / wav2vec2 experts: no gradient reaches the CNN, no layer drop,
        # and the file's dropout rates act in train mode (`-f`, --upstream_trainable). Eval: no dropout.
        finetune_like_s3prl(self.model)

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return self.model.arch.downsample  # 320 for WavLM, HuBERT, wav2vec 2.0: 20 ms frames at 16 kHz

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        padded = pad_sequence(wavs, batch_first=True)  # (B, S), zero-padded
        hidden_states = self.model(padded, lengths)
        return {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}

"""Let s3prl's ASV downstream run on a machine without a GPU.

``s3prl/downstream/sv_voxceleb1/expert.py`` (0.4.18, commit ec8064b5) moves
its attention mask with a bare ``attention_mask_pad.cuda()`` in ``forward``
(train and evaluation), whatever ``--device`` says, so ASV fails on a
CPU-only machine ("Torch not compiled with CUDA enabled" / "no NVIDIA
driver"). No other of the ten SUPERB downstreams calls ``.cuda()``.

:func:`tensor_cuda_stays_on_cpu` makes ``torch.Tensor.cuda`` return the tensor
itself, only while no GPU is available and only inside the ``with`` block;
with a GPU it changes nothing. The runner is meant to enter it around
``run_downstream.main()``; until it does, ``tests/superb_cli_cuda_shim.py`` is
the ``pruned-upstream`` command with it in force (``PRUNED_UPSTREAM=...`` for
``scripts/run_superb.sh``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def tensor_cuda_stays_on_cpu() -> Iterator[bool]:
    """Inside the block, without a GPU, ``tensor.cuda(...)`` is ``tensor``; yields whether it patched."""
    import torch

    if torch.cuda.is_available():
        yield False
        return
    original = torch.Tensor.cuda

    def cuda(self, *args, **kwargs):
        return self

    torch.Tensor.cuda = cuda
    try:
        yield True
    finally:
        torch.Tensor.cuda = original


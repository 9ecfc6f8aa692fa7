"""pruned-upstream: distil and prune WavLM into a compact s3prl upstream.

    from pruned_upstream import load_model, save_model, make_prunable, export, CheckpointError

The names are resolved lazily, so that torch-free parts (the SUPERB score) do
not import torch.
"""

__all__ = ["load_model", "save_model", "make_prunable", "export", "CheckpointError"]

_WHERE = {
    "load_model": "checkpoints",
    "save_model": "checkpoints",
    "make_prunable": "model.prunable",
    "export": "exporting",  # not export.py: a submodule would shadow the function
    "CheckpointError": "errors",  # any file that cannot be read (torch-free)
}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'pruned_upstream' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)

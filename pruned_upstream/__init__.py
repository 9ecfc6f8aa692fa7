"""pruned-upstream: distil and prune WavLM into a compact s3prl upstream.

    from pruned_upstream import load_model, save_model, make_prunable, export
"""

from .checkpoints import load_model, save_model

__all__ = ["load_model", "save_model", "make_prunable", "export"]


def __getattr__(name):  # the pruning API lives above the model (imports flow one way)
    if name == "make_prunable":
        from .prune import make_prunable

        return make_prunable
    if name == "export":
        from .export import export

        return export
    raise AttributeError(name)

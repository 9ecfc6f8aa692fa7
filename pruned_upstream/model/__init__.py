"""Everything needed to RUN a dense, prunable or pruned WavLM; imports nothing above it."""

from .wavlm import WavLM, tiny_arch

__all__ = ["WavLM", "tiny_arch"]

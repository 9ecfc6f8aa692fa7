"""`pruned-upstream inspect MODEL [--png FILE]`: the kept structure per layer."""

from __future__ import annotations

from ..checkpoints import load_model
from ..model_report import format_layer_table, save_layer_plot


def inspect_command(path: str, png: str | None = None) -> int:
    model = load_model(path)
    print(format_layer_table(model))
    if png:
        save_layer_plot(model, png)
        print(f"saved {png}")
    return 0

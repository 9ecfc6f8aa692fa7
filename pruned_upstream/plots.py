"""`pruned-upstream plot RUN_DIR`: the figures of a training run, as PNGs in RUN_DIR/plots.

- mask_trajectories.png: E[z_MHA] and E[z_FFN] of every layer over the steps (the paper's Figure 3a);
- sparsity.png: expected, realised (deterministic masks) and target sparsity over the steps;
- loss.png: the distillation loss and the Lagrangian term;
- kept_params_per_layer.png: kept parameters per layer of the last checkpoint, exported (Figure 3b).

Everything is read from RUN_DIR/log.jsonl and the checkpoints: no TensorBoard needed.
Nothing inside RUN_DIR is followed through a symbolic link (run_files.py): a link among
its entries (plots/ or a PNG in it included) is refused in one line; each PNG is drawn
into a new private temp directory, then renamed into place.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError
from .exporting import export
from .model_report import save_layer_plot
from .run_dir import latest_checkpoint, load_student, read_log
from .run_files import make_dir, refuse_links, staged


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


PLOTTED = ("z_mha/", "z_ffn/", "sparsity/", "loss/")  # the log's keys the figures draw


def check_plotted_values(rows: list[dict], log_path) -> None:
    """Every value the figures draw is a number (or null): a string or a list is refused, not drawn."""
    for row in rows:
        for key, value in row.items():
            if key.startswith(PLOTTED) and value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                raise CheckpointError(log_path, f"step {row['step']}: {key} = {value!r} is not a number")


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _layers(rows: list[dict], prefix: str) -> list[str]:
    keys = {k for r in rows for k in r if k.startswith(prefix) and k[len(prefix):].isdigit()}
    return sorted(keys, key=lambda k: int(k[len(prefix):]))


def plot_mask_trajectories(rows: list[dict], png: Path) -> bool:
    """E[z] of the block gates per layer over training; False when the run has no block gates."""
    kinds = [(title, prefix) for title, prefix in (("z_MHA", "z_mha/"), ("z_FFN", "z_ffn/")) if _layers(rows, prefix)]
    if not kinds:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.4), squeeze=False)
    for ax, (title, prefix) in zip(axes[0], kinds):
        for key in _layers(rows, prefix):
            ax.plot(*_series(rows, key), lw=1, label=f"layer {key[len(prefix):]}")
        ax.plot(*_series(rows, prefix + "mean"), color="black", lw=2.2, label="mean")
        ax.set_title(f"{title} (expected value)")
        ax.set_xlabel("step")
        ax.set_ylim(-0.03, 1.03)
    axes[0][-1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return True


def plot_sparsity(rows: list[dict], png: Path) -> bool:
    curves = [(k, label) for k, label in (("sparsity/target", "target p"), ("sparsity/expected", "expected p_hat"),
                                          ("sparsity/realised", "deterministic masks")) if _series(rows, k)[0]]
    if len(curves) < 2:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for key, label in curves:
        ax.plot(*_series(rows, key), label=label, ls="--" if key == "sparsity/target" else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("sparsity of the prunable parameters")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return True


def plot_losses(rows: list[dict], png: Path) -> bool:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(*_series(rows, "loss/distill"), label="distillation loss")
    lagrangian = _series(rows, "loss/lagrangian")
    if any(lagrangian[1]):
        ax.plot(*lagrangian, label="Lagrangian term")
    ax.set_xlabel("step")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return True


def plot_run(run_dir) -> int:
    """Write the run's PNGs into RUN_DIR/plots and list them."""
    run_dir = Path(run_dir)
    refuse_links(run_dir)  # RunLinkError (one line) naming the first link
    rows = read_log(run_dir)
    check_plotted_values(rows, run_dir / "log.jsonl")
    out = make_dir(run_dir / "plots")
    written = []
    for name, plot in (("mask_trajectories.png", plot_mask_trajectories), ("sparsity.png", plot_sparsity),
                       ("loss.png", plot_losses)):
        with staged(out / name) as tmp:
            if plot(rows, tmp):
                written.append(out / name)
    if latest_checkpoint(run_dir) is not None:
        model = export(load_student(run_dir))
        with staged(out / "kept_params_per_layer.png") as tmp:
            save_layer_plot(model, str(tmp))
        written.append(out / "kept_params_per_layer.png")
    for path in written:
        print(f"saved {path}")
    return 0

"""The kept structure of a model, per layer: a table, and the paper's Figure 3b (`pruned-upstream inspect`)."""

from __future__ import annotations


def layer_table(model) -> list[dict]:
    """One row per transformer layer: kept heads, qk/vo dims, FFN units and parameters."""
    rows = []
    for i, (layer_arch, layer) in enumerate(zip(model.arch.layers, model.encoder.layers)):
        rows.append(
            dict(
                layer=i,
                attn=layer_arch.attn,
                heads=len(layer_arch.heads) if layer_arch.attn else 0,
                qk=layer_arch.qk_total if layer_arch.attn else 0,
                vo=layer_arch.vo_total if layer_arch.attn else 0,
                ffn=layer_arch.ffn,
                ffn_units=layer_arch.ffn_dim if layer_arch.ffn else 0,
                params=sum(p.numel() for p in layer.parameters()),
            )
        )
    return rows


def format_layer_table(model) -> str:
    lines = [f"{'layer':>5} {'attn':>5} {'heads':>5} {'qk':>5} {'vo':>5} {'ffn':>5} {'units':>6} {'params':>10}"]
    for r in layer_table(model):
        lines.append(
            f"{r['layer']:>5} {('yes' if r['attn'] else 'no'):>5} {r['heads']:>5} {r['qk']:>5} {r['vo']:>5} "
            f"{('yes' if r['ffn'] else 'no'):>5} {r['ffn_units']:>6} {r['params']:>10,}"
        )
    lines.append(f"total parameters: {model.num_params():,} ({model.num_params() / 1e6:.2f} M)")
    return "\n".join(lines)


def save_layer_plot(model, png: str) -> None:
    """Kept parameters per layer, attention and FFN stacked (the paper's Figure 3b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attn, ffn = [], []
    for layer in model.encoder.layers:
        a = sum(p.numel() for n, p in layer.named_parameters() if n.startswith("self_attn.") and "relative" not in n)
        f = sum(p.numel() for n, p in layer.named_parameters() if n.startswith(("fc1.", "fc2.")))
        attn.append(a / 1e6)
        ffn.append(f / 1e6)
    x = list(range(len(attn)))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(x, attn, label="attention")
    ax.bar(x, ffn, bottom=attn, label="FFN")
    ax.set_xlabel("layer")
    ax.set_ylabel("kept parameters (M)")
    ax.set_xticks(x)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)

"""What a student's gates are: the mask kinds, the paper's set, and the options of `make_prunable`.

Torch-free, so that the training config and the model share one definition.
The kinds (docs/method.md section 2): per layer the whole attention block
("mha"), every query/key dim ("qk") and value/output dim ("vo") of every head,
the whole FFN block ("ffn") and every FFN unit ("int"); "conv", CNN output
channels, is ours and off by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MASK_KINDS = ("mha", "qk", "vo", "ffn", "int", "conv")
PAPER_KINDS = ("mha", "qk", "vo", "ffn", "int")  # the paper's masks (Eq. 3)
INIT_KEEP = 0.99  # DPHuBERT's initial keep probability (docs/gates.md)


@dataclass
class PruneConfig:
    """Which mask kinds to attach, the STE per kind (Eq. 4; False: "w/o STE"), the gates' initial keep."""

    kinds: list[str] = field(default_factory=lambda: list(PAPER_KINDS))
    ste: dict[str, bool] | bool = field(default_factory=lambda: dict.fromkeys(MASK_KINDS, True))
    init_keep: float = INIT_KEEP

    def __post_init__(self):
        if isinstance(self.ste, bool):  # ste=False: every kind
            self.ste = dict.fromkeys(MASK_KINDS, self.ste)

    def check(self) -> None:
        """ValueError naming the key for unknown kinds or an initial keep outside (0, 1)."""
        for key, names in (("prune.kinds", self.kinds), ("prune.ste", self.ste)):
            unknown = sorted(set(names) - set(MASK_KINDS))
            if unknown:
                raise ValueError(f"{key} has unknown kinds {unknown}; known: {', '.join(MASK_KINDS)}")
        if not 0.0 < self.init_keep < 1.0:
            raise ValueError(f"prune.init_keep must lie in (0, 1), got {self.init_keep}")

    def ste_of(self, kind: str) -> bool:
        return bool(self.ste.get(kind, True))

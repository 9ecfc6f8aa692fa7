"""SUPERB score (both conventions) and the reading of s3prl's results; no torch.

See docs/superb_score.md.
"""

from pruned_upstream.superb.command import run_score
from pruned_upstream.superb.references import CONVENTIONS, METRICS, PAPER_TABLE1, TASKS
from pruned_upstream.superb.results import ModelResults, read_expdir, read_results
from pruned_upstream.superb.score import ScoreResult, superb_score, task_points

__all__ = [
    "CONVENTIONS", "METRICS", "PAPER_TABLE1", "TASKS", "ModelResults", "ScoreResult",
    "read_expdir", "read_results", "run_score", "superb_score", "task_points",
]

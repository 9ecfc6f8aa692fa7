"""The error for a file that cannot be read (torch-free, so the SUPERB score can raise it too).

    from pruned_upstream import CheckpointError

Every reader of a file we or s3prl wrote (model files, training checkpoints,
`log.jsonl`, `summary.json`, s3prl's result logs) turns any failure to read it
into this one error, its message naming the file (and line or key) and the problem.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file that cannot be read; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem

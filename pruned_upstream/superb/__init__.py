"""The SUPERB score (both conventions) and the reading of s3prl's results; no torch.

    superb.references   tasks, metrics, the conventions' reference points, the paper's Table 1
    superb.score        points per task and the score
    superb.results      a results CSV or a directory of s3prl experiments -> metrics per model
    superb.table        scored models as a table, JSON, plot points
    superb.plot         score vs parameters (the paper's Figure 2)

See docs/superb_score.md.
"""

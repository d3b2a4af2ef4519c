"""Experiments over many runs: ``benchmark`` (cost), ``compare`` (models trained on the same folds with equal
budgets, ranked by a leaderboard), ``report`` (one page comparing trained runs)."""

"""Evaluation: SuperGLUE sources, input formats, official metrics and leaderboard files,
and the evaluation modes built on them."""

"""SuperGLUE: sources, input formats, official metrics and leaderboard submissions."""

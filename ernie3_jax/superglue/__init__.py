"""SuperGLUE as published: its file formats and sources, official metrics, leaderboard
files, and the prompts zero- and few-shot scoring asks. Definitions only; the seqio
registrations are in tasks/, the runs that use them in training/ and evaluation/."""

"""The default weights of knowledge masking's three levels, defined once.

(token, phrase, entity): the share of masking budget draws that pick a unit of each
level. Knowledge-masked LM, UKTP and DataConfig all take it from here.
"""

DEFAULT_LEVEL_WEIGHTS: tuple[float, float, float] = (0.3, 0.3, 0.4)

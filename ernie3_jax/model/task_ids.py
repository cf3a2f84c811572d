"""Task ids of the pre-training objectives (the task embedding's rows).

ERNIE 2.0 gives every task its own embedding; fine-tuning tasks start after these.
"""

KNOWLEDGE_MASKED_LM = 0
DOCUMENT_LM = 1
SENTENCE_REORDERING = 2
SENTENCE_DISTANCE = 3
UKTP = 4
FINETUNE = 5

NAMES = {
    KNOWLEDGE_MASKED_LM: "knowledge_masked_lm",
    DOCUMENT_LM: "document_lm",
    SENTENCE_REORDERING: "sentence_reordering",
    SENTENCE_DISTANCE: "sentence_distance",
    UKTP: "uktp",
}
NLU_TASKS = (KNOWLEDGE_MASKED_LM, SENTENCE_REORDERING, SENTENCE_DISTANCE, UKTP)

"""Pre-training data: the embedded corpus, readers, vocabulary, preprocessors."""

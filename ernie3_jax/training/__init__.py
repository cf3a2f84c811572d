"""Pre-training and fine-tuning loops: state, losses, optimizer, checkpoints, logging."""

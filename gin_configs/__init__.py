"""The shipped gin files (models/, runs/, experiments/); installed as ernie3_jax/gin_configs."""

"""The process environment: host allocator settings for XLA:CPU and TensorFlow kept
off the accelerators."""

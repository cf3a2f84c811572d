"""Configuration: gin parsing with clear errors, search paths for the shipped gin files, the
effective config written to MODEL_DIR."""

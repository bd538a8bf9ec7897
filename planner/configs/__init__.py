"""Config files built from a TrainConfig as plain dicts (DeepSpeed JSON, accelerate YAML): pure, no torch."""

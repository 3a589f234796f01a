"""Data around the pipeline: the synthetic high-resolution benchmark and converters to LLaVA conversation JSON."""

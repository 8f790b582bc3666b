"""Inference engines. The core ships `mocker` (simulated) and `echo`; others are plugins."""

"""Fake Bench2Drive evaluator, CARLA server and SLURM tools for the runner tests."""

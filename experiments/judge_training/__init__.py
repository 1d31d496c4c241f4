"""Training and cross-validation of the offline judge's artefacts from the labelled replies.
Entry point: `python -m experiments.judge_training.train`."""

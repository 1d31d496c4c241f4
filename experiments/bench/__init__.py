"""Benchmarks: emojax against Hugging Face PyTorch with hooks and the peers users would pick
(nnsight, TransformerLens), the FLOP counts that split a ratio into work and rate, and the shapes
they run at. Entry point: `python -m experiments.bench.benchmark`."""

"""absl launchers of emojax: one per stage, the pipeline, `rate` and `demo`; the benchmarks in
`bench/`, judge training in `judge_training/`."""
import os

# transformers advises at import that PyTorch is absent; emojax only uses its tokenizers and configs.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

"""Benchmarks against the reference implementations, each run from the repository root as
`python -m benchmarks.NAME [--quick]`: `attention` (every kernel against length),
`gpt_benchmark`, `tapas_benchmark`, `training_benchmark`, `vision_benchmark`,
`wav2vec2_benchmark`. `harness` is what they share; `templates/` holds their report prose;
RESULTS.md every figure they recorded."""

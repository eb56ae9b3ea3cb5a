"""Attention kernels on CPU: time and peak memory against sequence length, with anchors.

    python -m benchmarks.attention [--quick] [--out DIR] [--results PATH]

`cells.py` says what is measured: every cell is a (name, factory) entry in `cells()`; the factory
builds an attention function, and a factory that raises (a kernel that does not exist yet, a
missing package) becomes a skipped row with the reason. Our kernels (Dense, Sparse band /
Longformer / BigBird, FAVOR+) run in the same process as the anchors
`jax.nn.dot_product_attention(implementation="xla")` and torch's `scaled_dot_product_attention`
(CPU, no_grad).

`runner.py` measures them. Protocol (research/attention.md section 9): B=1, 4 heads, head_dim 64,
float32, the same inputs for every cell at a length. For each length, ascending: every JAX cell
is jitted and compiled separately (compile time and `compiled.memory_analysis()` temp + output
bytes, the static peak memory), cells predicted to exceed the memory cap or the time budget are
skipped (and listed), then a memory pass, one call per cell that records the RSS high-water mark
over it (malloc_trim, /proc/self/clear_refs, VmHWM: the memory measure of torch rows), then one
untimed warm-up call per cell, then k timed calls per cell, round-robin over the cells (cheap
cells first) so that drift on a shared machine hits every kernel alike; the median is reported,
the minimum kept as a noise check.

`report.py` writes what was measured. Outputs in --out (default runs/attention_benchmark):
attention_benchmark.json (every measurement), attention_benchmark.md (the report) and
attention_benchmark.png (log-log time and memory against length). The report also replaces the
section between the markers `<!-- attention-benchmark:start -->` and
`<!-- attention-benchmark:end -->` of --results: benchmarks/RESULTS.md by default for a full run
on the standard grid; --quick (what `make bench-attention` runs), --lengths or --cells leave it
alone unless --results is given. `profile.py` is `--dense-profile`: where the time of exact
attention goes.
"""

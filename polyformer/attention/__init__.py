"""One attention package, three kernel families, one calling convention.

    from polyformer import attention as A
    A.Dense()
    A.Sparse(A.patterns.bigbird(block=64, window=3, global_blocks=2, random_blocks=3, key=key))
    A.Sparse(A.patterns.band(256) | A.patterns.global_tokens([0]))    # Longformer
    A.Favor(num_features=256)

    out = kernel(q, k, v, mask=None, causal=False)   # [batch, length, heads, head_dim]
    out = kernel(q, k, v, causal=True, segment_ids=ids)   # packed sequences, [batch, length]

k and v may have fewer heads than q (grouped-query attention). Every kernel takes
`implementation=`: "auto" (default: the Pallas kernel of the platform the program is compiled
for, splash attention on TPUs and Pallas flash attention on GPUs, else XLA), "xla", "pallas_tpu",
"pallas_gpu". See base.py for the full contract shared by every kernel.
"""

from polyformer.attention import patterns
from polyformer.attention.base import AttentionKernel
from polyformer.attention.dense import Dense, KVCache
from polyformer.attention.favor import Favor
from polyformer.attention.layer import MultiHeadAttention
from polyformer.attention.sparse import Sparse

__all__ = [
    "AttentionKernel",
    "Dense",
    "Favor",
    "KVCache",
    "MultiHeadAttention",
    "Sparse",
    "patterns",
]

"""The XLA:CPU code generation of the suite's processes, and a jit's way back to users'."""

# XLA:CPU's fusion emitters, its default, build each fusion in an MLIR context of its own, which
# in a profile was about 90% of XLA's compile of the suite's tiny programs. Its elemental
# emitters, the default before them, compile the same fusions through LLVM directly: a tiny
# train step compiles in 0.7 of the time, and the suite uses a fifth less CPU time
# (benchmarks/RESULTS.md). tests/conftest.py sets this for every process of the suite; users'
# programs keep the default. XLA stops a process whose XLA_FLAGS name a flag it does not know,
# so a jaxlib without this one fails every test at once, and then the setting goes.
FLAG = "xla_cpu_use_fusion_emitters"
SUITE_XLA_FLAGS = f"--{FLAG}=false"

# A jit's `compiler_options` for the code users' programs get, where a test needs it: a
# comparison of two different programs finer than their float32 rounding under the elemental
# emitters (remat against none, scanned layers against unscanned ones: 13 ulps apart on a
# gradient of 99), and a dot of two bfloat16 operands into float32, which this XLA runs only
# with the fusion emitters ("UNIMPLEMENTED: Unsupported element type for DotThunk::Execute:
# BF16 x BF16 = F32").
USERS = {FLAG: True}

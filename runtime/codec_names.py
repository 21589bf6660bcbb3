"""The codecs' names, importable without numba (runtime/codecs.py builds the codecs, and
importing it loads the kernels and LLVM: a process that only validates options, or that
spawns budgeted children, keeps LLVM untouched; see budget._version_of)."""

CODEC_NAMES = ("fp32", "fp16", "q8", "q4", "q2")
# The block codecs, as `plan` and `export --auto` plan them: bits per value.
BLOCK_CODECS = tuple(name for name in CODEC_NAMES if name.startswith("q"))

"""numba.cuda kernels of the runtime, one module per kernel family, mirroring
runtime/kernels/ (conv, gemm, pool, elementwise, movement, bn, loss), with the kernels the
codecs and the optimizers of runtime/ run on CUDA (codec_kernels.py, codecs.py,
optimizers.py), and the launch configuration and shared device helpers (launch.py). There
is no CUDA op, codec or optimizer glue: the one op table (runtime/ops.py), codec table
(runtime/codecs.py) and optimizer rules (runtime/optimizers.py) call these modules
through the backend.

Each module's host-side wrappers have the names, signatures and semantics of the CPU
functions they mirror (the glue calls one name), but take numba device arrays instead of
numpy arrays, launch kernels that write into the arrays they are given and allocate
nothing on the device. Arrays travel as stored, with their channel-major flags. The
kernels' own choices show in the workspace they ask for (`conv.conv_workspace`,
`elementwise.product_workspace`), and the codec encoders count bad input on the device
(`CudaCodecKernels`) instead of raising on every encode.

Wrappers use only the part of the device-array API that real GPUs and the CUDA simulator
share: `shape`, `size`, `dtype`, `ndim`, `flags["C_CONTIGUOUS"]`, contiguous `reshape`,
`view(dtype)`, basic slicing and the host copies. Importing this package needs numba.cuda
but no GPU: kernels compile at their first launch. runtime/device.py decides whether CUDA is usable.
"""

"""numba.cuda kernels of the runtime, one module per kernel family, mirroring
runtime/kernels/ (conv, gemm, pool, elementwise, bn, loss), with the kernels the codecs
and the optimizers of runtime/ run on CUDA (codec_kernels.py and codecs.py,
optimizers.py), data movement (movement.py), the launch configuration and shared device
helpers (launch.py), and the CUDA op table (ops.py, ops_movement.py, ops_batchnorm.py).

Each module's host-side wrappers have the signature and semantics of the CPU wrapper they
mirror, but take numba device arrays instead of numpy arrays, launch kernels that write
into the arrays they are given and allocate nothing on the device. Where the CPU ops pass
numpy views (a channel-major array swapped to NCHW), the CUDA ones pass the stored array
and its channel-major flag. A few wrappers take one more keyword: `maxpool_bwd(...,
kh=)` (bounds its gather), `softmax_xent_bwd(..., gy=)` (the loss gradient, read on the
device), and the codec encoders count bad input on the device (`CudaCodecKernels`)
instead of returning it.

Wrappers use only the part of the device-array API that real GPUs and the CUDA simulator
share: `shape`, `size`, `dtype`, `ndim`, `flags["C_CONTIGUOUS"]`, contiguous `reshape`,
`view(dtype)`, basic slicing and the host copies. Importing this package needs numba.cuda
but no GPU: kernels compile at their first launch. runtime/device.py decides whether CUDA is usable.
"""

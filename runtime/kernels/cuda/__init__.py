"""numba.cuda kernels of the runtime, one module per kernel family, mirroring
runtime/kernels/ (conv, gemm, pool, elementwise, bn, loss), plus the activation codecs
(codecs.py), the optimizers (optimizers.py), the data-movement ops (movement.py) and the
CUDA op table (ops.py).

Each module's host-side wrappers have the signature and semantics of the CPU wrapper they
mirror, but take numba device arrays instead of numpy arrays, launch kernels that write
into the arrays they are given and allocate nothing on the device. Wrappers use only the
part of the device-array API that real GPUs and the CUDA simulator share: `shape`,
`size`, `dtype`, `ndim`, contiguous `reshape`, `view(dtype)` and basic slicing.

Importing this package needs numba.cuda but no GPU: kernels compile at their first
launch. runtime/device.py decides whether CUDA is usable.
"""

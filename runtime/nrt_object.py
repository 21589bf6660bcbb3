"""Numba's runtime library (NRT) loaded from object code, as numba loads cached kernels.

Numba compiles its NRT functions (atomic reference counts, meminfo access: a few dozen
lines of LLVM IR) in every process, when the first kernel loads. That compilation runs
LLVM's optimization passes and its x86 code generator, which made 39 MiB of libllvmlite
resident: most of a budgeted process's start-up peak, while loading a cached kernel
needs only LLVM's object loader (about 10 MiB of it). `install` makes numba take the
library from user_cache_dir()/nrt/ instead, in numba's own cached form
(`serialize_using_object_code`, what its kernel cache stores); a process that finds none
compiles the library as numba would and stores it for the next one.

The stored library is keyed by the numba and llvmlite versions, numba's optimization
level and the code generator's target (triple, CPU name and features: numba's
`magic_tuple`, which keys its kernel cache too). `cached` says whether this process
would load it; `compiled_here` whether this process compiled it (the budget's probe and a
budgeted session count that as a compilation). The preparation (runtime/prepare.py)
stores it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

from .cachedirs import user_cache_dir

_state = {"installed": False, "compiled": False}


def install() -> None:
    """Make numba load its NRT library from the cache (compiling and storing it where
    there is none). Call before the first kernel loads; later, NRT is initialized
    already and nothing changes."""
    from numba.core.runtime import nrtdynmod

    if not _state["installed"]:
        nrtdynmod.compile_nrt_functions = _load_or_compile
        _state["installed"] = True


def cached() -> bool:
    """Whether this process would load numba's NRT library rather than compile it
    (already initialized, or stored for this process's numba and target)."""
    from numba.core.registry import cpu_target
    from numba.core.runtime.nrt import rtsys

    return rtsys._init or _path(cpu_target.target_context.codegen()).is_file()


def compiled_here() -> bool:
    """Whether this process compiled the NRT library (through `install`'s path)."""
    return _state["compiled"]


def ensure() -> bool:
    """Initialize numba's NRT in this process through `install`'s path (afterwards the
    library is stored, unless the cache directory cannot be written); True if it was
    initialized now, False if it was already."""
    from numba.core.registry import cpu_target
    from numba.core.runtime.nrt import rtsys

    install()
    if rtsys._init:
        return False
    rtsys.initialize(cpu_target.target_context)
    return True


def _path(codegen) -> Path:
    import llvmlite
    import numba

    key = repr((numba.__version__, llvmlite.__version__, numba.config.OPT, codegen.magic_tuple()))
    return user_cache_dir() / "nrt" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.pickle"


def _load_or_compile(ctx):
    """numba's compile_nrt_functions(ctx), from the stored object code where there is one."""
    codegen = ctx.codegen()
    path = _path(codegen)
    try:
        state = pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError):
        state = None
    if isinstance(state, tuple) and len(state) == 3 and state[1] == "object":
        return codegen.unserialize_library(state)
    return _compile_and_store(ctx, path)


def _compile_and_store(ctx, path: Path):
    from numba.core.runtime import nrtdynmod

    ir_module, library = nrtdynmod.create_nrt_module(ctx)
    library.enable_object_caching()
    library.add_ir_module(ir_module)
    library.finalize()
    _state["compiled"] = True
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(library.serialize_using_object_code()))
        tmp.replace(path)
    except OSError:
        pass
    return library

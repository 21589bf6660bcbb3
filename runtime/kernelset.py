"""Which compiled kernels a model's training needs, and whether numba's cache holds them.

A kernel's machine code is compiled per signature (the types of its arguments: dtype,
rank and layout of each array), so "the kernels a model needs" is a list of
(kernel, signature) entries, a `KernelSet`. `discover` finds it without compiling
anything: it builds a session of the model as training does (one sample, the codec and
optimizer asked for) while every runtime kernel is replaced by a recorder that notes its
signature and returns 0 without running (kernels only write into arrays they are given,
and those that return something return a count). Both builds of every two-build kernel
are listed, as a session loads both (preload.load_both_builds), and so are the budget
probe's kernels for that codec (preload.warm_up_modules). Discovering takes about a second.

The set is stored per model structure, codec and optimizer in
user_cache_dir()/kernelsets/ (a list of signatures, not machine code). `missing` then
asks numba's cache index, entry by entry and without compiling or loading, which of them
a process would have to compile: none, on a prepared machine; all, with an empty cache
or a changed source file. runtime/prepare.py compiles the missing ones in child
processes.

`count_compilations` counts the kernels this process compiles (not loads) from then on:
a budgeted session that compiled had a start-up peak the budget did not plan for.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .cachedirs import RUNTIME_DIR, user_cache_dir
from .errors import FactoEdgeError

PACKAGE = __package__  # "facto_edge.runtime"
KERNEL_MODULES = (f"{PACKAGE}.kernels", f"{PACKAGE}.optimizers")


@dataclass(frozen=True)
class Entry:
    """One compiled kernel: the dispatcher `module.name` (`build` "serial" or "parallel"
    for a two-build kernel, "" for a plain njit function) at signature `sig`."""

    module: str
    name: str
    build: str
    sig: tuple

    def dispatcher(self):
        obj = getattr(importlib.import_module(self.module), self.name)
        return getattr(obj, self.build) if self.build else obj

    @property
    def function(self) -> str:
        """The dispatcher's name, unique in the runtime (all its signatures share one cache
        index file, so one process should compile them)."""
        tail = self.module.rsplit(".", 1)[-1]
        return f"{tail}.{self.name}" + (f"[{self.build}]" if self.build else "")

    def __str__(self) -> str:
        return f"{self.function}({', '.join(str(t) for t in self.sig)})"


@dataclass(frozen=True)
class KernelSet:
    """The kernels one model's training needs (codec and optimizer included)."""

    key: str
    entries: tuple[Entry, ...]


def model_key(graph, codec: str, optimizer: str) -> str:
    """A digest of what decides the kernels a step calls: the graph's structure (ops,
    attributes, value names, initializer shapes and dtypes, the export's trainable set,
    input shape), the codec, the optimizer and the runtime's source; not the weights'
    values. A session training some layers only (`train_layers`) calls a subset of the
    export's kernels, so it shares the export's key."""
    digest = hashlib.sha1()
    for node in graph.nodes:
        attrs = sorted((k, repr(v)) for k, v in node.attrs.items())
        digest.update(repr((node.op_type, node.inputs, node.outputs, attrs)).encode())
    for name in sorted(graph.initializers):
        value = graph.initializers[name]
        digest.update(repr((name, value.shape, value.dtype.str)).encode())
    extra = (graph.input_shape, tuple(graph.manifest.trainable), codec, optimizer, runtime_digest())
    digest.update(repr(extra).encode())
    return digest.hexdigest()[:20]


def runtime_digest() -> str:
    """A digest of the runtime's Python source (a changed kernel or op: another set)."""
    digest = hashlib.sha1()
    for path in sorted(RUNTIME_DIR.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _record_path(key: str) -> Path:
    return user_cache_dir() / "kernelsets" / f"{key}.pickle"


def load_record(key: str) -> KernelSet | None:
    """The kernel set stored for `key`, or None (never discovered, or unreadable)."""
    try:
        entries = pickle.loads(_record_path(key).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    if not isinstance(entries, tuple) or not all(isinstance(e, Entry) for e in entries):
        return None
    return KernelSet(key, entries)


def save_record(kernels: KernelSet) -> Path:
    """Store a discovered kernel set (atomically); returns its path."""
    path = _record_path(kernels.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(kernels.entries, protocol=pickle.HIGHEST_PROTOCOL))
    tmp.replace(path)
    return path


def discover(source, codec: str = "q4", optimizer: str = "sgd") -> KernelSet:
    """The kernels training `source` (a *.facto directory or (ModelProto, manifest))
    with `codec` and `optimizer` calls, found without compiling (see the module's
    docstring); source None: the budget probe's only (key "runtime"). Runs a session's
    set-up in this process, which must not have loaded any runtime kernel yet (a loaded
    one is called without being recorded): call it in a fresh child."""
    from .graph import load_graph
    from .preload import warm_up_modules
    from .session import TrainingSession

    key = f"runtime-{runtime_digest()}-{codec}"
    with _recording() as seen:
        if source is not None:
            key = model_key(load_graph(source), codec, optimizer)
            TrainingSession(source, batch_size=1, codec=codec, optimizer=optimizer).close()
        warm_up_modules(codec)
    return KernelSet(key, _with_both_builds(seen))


def missing(entries: tuple[Entry, ...] | list[Entry]) -> list[Entry]:
    """The entries numba's cache cannot give this process (it would compile them): no
    index, an index of another source stamp or numba version, no such signature for this
    CPU, or a data file gone. Reads the index files only."""
    gone, indexes = [], {}
    for entry in entries:
        disp = entry.dispatcher()
        cache = getattr(disp, "_cache", None)
        cache_file = getattr(cache, "_cache_file", None)
        if cache_file is None:  # numba without an index cache: say it must compile
            gone.append(entry)
            continue
        if entry.function not in indexes:
            indexes[entry.function] = cache_file._load_index()
        key = cache._index_key(entry.sig, disp.targetctx.codegen())
        name = indexes[entry.function].get(key)
        if name is None or not os.path.exists(cache_file._data_path(name)):
            gone.append(entry)
    return gone


@dataclass
class CompileCount:
    """Runtime kernels this process compiled (not loaded from the cache), by name."""

    count: int = 0
    names: list[str] = field(default_factory=list)


_count: CompileCount | None = None
_count_lock = threading.Lock()


def count_compilations() -> CompileCount:
    """Start (once per process) counting the runtime kernels this process compiles, from
    numba's "numba:compile" event (it fires on a cache miss, not when a kernel loads);
    returns the live count."""
    global _count
    with _count_lock:
        if _count is None:
            from numba.core import event

            count = CompileCount()

            class _Listener(event.Listener):
                def on_start(self, ev) -> None:
                    fn = getattr(ev.data.get("dispatcher"), "py_func", None)
                    if fn is not None and fn.__module__.startswith(PACKAGE):
                        count.count += 1
                        count.names.append(fn.__qualname__)

                def on_end(self, ev) -> None:
                    pass

            event.register("numba:compile", _Listener())
            _count = count
    return _count


@contextmanager
def _recording() -> Iterator[list]:
    """Within the block, a call of a runtime kernel that has no compiled overload records
    (dispatcher, signature) instead of compiling. A two-build kernel (dispatch.Kernel:
    the big array loops) then returns 0 without running; a plain njit function runs as
    Python (they compute shapes or do small element-wise work), and what it calls is not
    recorded (compiling it compiles its callees). Other numba functions compile as usual."""
    from numba.core.dispatcher import Dispatcher

    from .kernels.dispatch import Kernel

    two_build = {id(d) for k in _instances(Kernel) for d in (k.serial, k.parallel)}
    loaded = _loaded_kernels()
    if loaded:
        raise FactoEdgeError(
            f"kernel discovery needs a process that has loaded no runtime kernel, found "
            f"{len(loaded)} loaded (first: {loaded[0]}); run it in a fresh process"
        )
    seen: list = []
    depth = [0]
    original = Dispatcher._compile_for_args

    def as_python(fn):
        def run(*args, **kws):
            depth[0] += 1
            try:
                return fn(*args, **kws)
            finally:
                depth[0] -= 1

        return run

    def record(self, *args, **kws):
        if not self.py_func.__module__.startswith(PACKAGE):
            return original(self, *args, **kws)
        if depth[0] == 0:
            sig = tuple(self.typeof_pyval(a) for a in args)
            if (self, sig) not in seen:
                seen.append((self, sig))
        return _returns_zero if id(self) in two_build else as_python(self.py_func)

    Dispatcher._compile_for_args = record
    try:
        yield seen
    finally:
        Dispatcher._compile_for_args = original


def _returns_zero(*args, **kws) -> int:
    return 0


def _with_both_builds(seen: list) -> tuple[Entry, ...]:
    """Entries for what was called, each two-build kernel's other build included. A kernel
    that is no module's top-level name cannot be named for a compile child: it is left
    out, compiles where it is first called, and count_compilations counts it."""
    names = _dispatcher_names()
    out: dict[tuple, Entry] = {}
    for disp, sig in seen:
        if id(disp) not in names:
            continue
        module, name, build = names[id(disp)]
        builds = ("serial", "parallel") if build else ("",)
        for b in builds:
            entry = Entry(module, name, b, sig)
            out.setdefault((module, name, b, sig), entry)
    return tuple(out.values())


def _dispatcher_names() -> dict[int, tuple[str, str, str]]:
    """id(dispatcher) -> (module, attribute, build) for every module-level kernel."""
    from numba.core.dispatcher import Dispatcher

    from .kernels.dispatch import Kernel

    names: dict[int, tuple[str, str, str]] = {}
    for module in _kernel_modules():
        for attr, value in vars(module).items():
            if isinstance(value, Kernel):
                names[id(value.serial)] = (module.__name__, attr, "serial")
                names[id(value.parallel)] = (module.__name__, attr, "parallel")
            elif isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__:
                names[id(value)] = (module.__name__, attr, "")
    return names


def _loaded_kernels() -> list[str]:
    """The module-level runtime kernels that hold a compiled overload in this process."""
    from numba.core.dispatcher import Dispatcher

    from .kernels.dispatch import Kernel

    out = []
    for m in _kernel_modules():
        for attr, v in vars(m).items():
            builds = (v.serial, v.parallel) if isinstance(v, Kernel) else (v,)
            for d in builds:
                if isinstance(d, Dispatcher) and d.overloads:
                    out.append(f"{m.__name__}.{attr}")
    return out


def _instances(kind: type) -> list:
    return [v for m in _kernel_modules() for v in vars(m).values() if isinstance(v, kind)]


def _kernel_modules() -> list:
    """The CPU kernel modules and the optimizers' module, imported."""
    from .preload import _modules

    return [*_modules(KERNEL_MODULES[0]), importlib.import_module(KERNEL_MODULES[1])]

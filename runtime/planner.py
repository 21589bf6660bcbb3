"""Memory planners: give every buffer an offset in one arena (after TFLite Micro).

A buffer has a size in bytes and a lifetime [first, last] of schedule steps (inclusive).
Two buffers may share bytes only if their lifetimes do not intersect.

GreedyPlanner, the algorithm:
    1. Sort buffers by size, largest first (ties: earlier first use, then insertion order).
    2. For each buffer, collect the already-placed buffers whose lifetimes intersect its
       own, sorted by offset, and take the lowest 64-byte-aligned offset where it fits in
       a gap between them (or after the last one).
    The arena size is the highest end of any buffer, rounded up to 64 bytes.

Limits: greedy-by-size is a heuristic, not an optimum (the problem is NP-hard); it ends
at or above `lower_bound()` (the most bytes live at one step) and, in practice, close to
it for the chain-shaped lifetimes of a training schedule. Each placement looks at every
placed buffer (vectorized with numpy), so planning n buffers costs O(n^2) element work
and O(n * k log k) for k overlapping lifetimes: ~2000 buffers plan in well under a second.
Offsets are fixed once planned; adding a buffer replans everything.

LinearPlanner is the baseline: every buffer gets its own bytes, one after another.
Both planners share `overlaps()` (pairs that collide; empty for a correct plan),
`lower_bound()` and `render()` (an ASCII picture of the plan).
"""

import numpy as np

ALIGN = 64


def align_up(n: int, align: int = ALIGN) -> int:
    """`n` rounded up to a multiple of `align`."""
    return -(-n // align) * align


class _Planner:
    """Buffers and the checks and pictures every plan shares; subclasses place them."""

    def __init__(self) -> None:
        self._sizes: list[int] = []
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self._offsets: np.ndarray | None = None

    def add_buffer(self, size: int, first: int, last: int) -> int:
        """Add a buffer of `size` bytes live from step `first` to step `last` (inclusive);
        returns its index."""
        if size < 0 or first < 0 or last < first:
            raise ValueError(
                f"buffer needs size >= 0 and 0 <= first <= last, got size={size}, "
                f"first={first}, last={last}"
            )
        self._sizes.append(int(size))
        self._firsts.append(int(first))
        self._lasts.append(int(last))
        self._offsets = None
        return len(self._sizes) - 1

    def __len__(self) -> int:
        return len(self._sizes)

    def offset(self, i: int) -> int:
        """Byte offset of buffer `i` in the arena (a multiple of 64)."""
        return int(self._planned()[i])

    def arena_size(self) -> int:
        """Bytes the arena needs for this plan (a multiple of 64)."""
        if not self._sizes:
            return 0
        return align_up(int((self._planned() + np.array(self._sizes)).max()))

    def lower_bound(self) -> int:
        """The most bytes live at any one step: no plan can use a smaller arena."""
        if not self._sizes:
            return 0
        steps = max(self._lasts) + 2
        delta = np.zeros(steps, np.int64)
        np.add.at(delta, self._firsts, self._sizes)
        np.add.at(delta, np.array(self._lasts) + 1, -np.array(self._sizes))
        return int(np.cumsum(delta).max())

    def overlaps(self) -> list[tuple[int, int]]:
        """Pairs (i, j), i < j, live at a common step whose byte ranges intersect."""
        off = self._planned()
        size = np.array(self._sizes, np.int64)
        first = np.array(self._firsts)
        last = np.array(self._lasts)
        end = off + size
        pairs = []
        for i in range(len(size)):
            j = np.arange(i + 1, len(size))
            hit = (first[j] <= last[i]) & (first[i] <= last[j])
            hit &= (off[j] < end[i]) & (off[i] < end[j]) & (size[j] > 0) & (size[i] > 0)
            pairs += [(i, int(k)) for k in j[hit]]
        return pairs

    def render(self, width: int = 80) -> str:
        """ASCII plan: one row per step, columns are arena bytes (width chars in all).

        A buffer is drawn with a letter/digit by its index modulo 62, '.' is free,
        '!' marks bytes two live buffers claim (a bug; see `overlaps`).
        """
        marks = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        total = max(self.arena_size(), 1)
        off = self._planned()
        end = off + np.array(self._sizes, np.int64)
        first = np.array(self._firsts)
        last = np.array(self._lasts)
        bad = self.overlaps()

        def paint(row: list[str], lo: int, hi: int, mark: str) -> None:
            c0 = lo * width // total
            for c in range(c0, min(max(c0 + 1, -(-hi * width // total)), width)):
                row[c] = mark

        lines = [f"arena {total} bytes, {len(self)} buffers, {total / width:.0f} bytes/char"]
        for t in range(max(self._lasts, default=-1) + 1):
            row = ["."] * width
            for i in np.nonzero((first <= t) & (t <= last) & (end > off))[0]:
                paint(row, int(off[i]), int(end[i]), marks[i % len(marks)])
            for i, j in bad:
                if max(first[i], first[j]) <= t <= min(last[i], last[j]):
                    paint(row, int(max(off[i], off[j])), int(min(end[i], end[j])), "!")
            lines.append(f"{t:4d} |{''.join(row)}|")
        return "\n".join(lines)

    def _planned(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = self._place()
        return self._offsets

    def _place(self) -> np.ndarray:
        raise NotImplementedError


class LinearPlanner(_Planner):
    """Baseline: each buffer gets its own bytes, in insertion order, 64-byte aligned."""

    def _place(self) -> np.ndarray:
        ends = np.cumsum([align_up(s) for s in self._sizes], dtype=np.int64)
        return np.concatenate([[0], ends[:-1]]).astype(np.int64)


class GreedyPlanner(_Planner):
    """Greedy by size, first fit over the gaps between live buffers (see module doc)."""

    def _place(self) -> np.ndarray:
        n = len(self._sizes)
        size = np.array(self._sizes, np.int64)
        first = np.array(self._firsts, np.int64)
        last = np.array(self._lasts, np.int64)
        order = np.lexsort((np.arange(n), first, -size))
        offsets = np.zeros(n, np.int64)
        placed = np.zeros(n, bool)
        for i in order:
            live = placed & (first <= last[i]) & (last >= first[i]) & (size > 0)
            offsets[i] = _first_fit(offsets[live], size[live], int(size[i]))
            placed[i] = True
        return offsets


def _first_fit(offsets: np.ndarray, sizes: np.ndarray, size: int) -> int:
    """Lowest aligned offset where `size` bytes fit between the given byte ranges."""
    by_offset = np.argsort(offsets, kind="stable")
    starts = offsets[by_offset]
    # candidate before range k: the aligned end of everything below it
    ends = np.maximum.accumulate(starts + sizes[by_offset])
    candidates = np.concatenate([[0], -(-ends // ALIGN) * ALIGN])
    fits = np.nonzero(starts - candidates[:-1] >= size)[0]
    return int(candidates[fits[0]] if len(fits) else candidates[-1])

"""Memory planners: a hand-worked plan, properties over random lifetimes, the checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facto_edge.runtime.planner import ALIGN, GreedyPlanner, LinearPlanner

# (size, first, last)
WORKED = [(1000, 0, 2), (600, 1, 3), (300, 3, 5), (500, 4, 5), (100, 0, 5)]


def _plan(cls, buffers):
    p = cls()
    for size, first, last in buffers:
        p.add_buffer(size, first, last)
    return p


def test_greedy_hand_worked_offsets():
    # Placement order by size: b0 1000, b1 600, b3 500, b2 300, b4 100.
    # b0 [0,2]: nothing placed -> 0; bytes [0, 1000).
    # b1 [1,3]: meets b0; no room below it -> aligned end of b0 = 1024; [1024, 1624).
    # b3 [4,5]: meets neither b0 nor b1 -> 0; [0, 500).
    # b2 [3,5]: meets b1 [1024,1624) and b3 [0,500); the gap [512, 1024) holds 300 -> 512.
    # b4 [0,5]: meets all; gaps below 1024 and at 1624 are taken -> align(1624) = 1664.
    # Arena: align(1664 + 100) = 1792. Lower bound: steps 1-2 hold b0+b1+b4 = 1700.
    p = _plan(GreedyPlanner, WORKED)
    assert [p.offset(i) for i in range(5)] == [0, 1024, 512, 0, 1664]
    assert p.arena_size() == 1792
    assert p.lower_bound() == 1700
    assert p.overlaps() == []


def test_linear_hand_worked_offsets():
    # aligned sizes 1024, 640, 320, 512, 128 one after another; last ends at 2496 + 100
    p = _plan(LinearPlanner, WORKED)
    assert [p.offset(i) for i in range(5)] == [0, 1024, 1664, 1984, 2496]
    assert p.arena_size() == 2624
    assert p.overlaps() == []


def test_disjoint_lifetimes_share_offset_zero():
    p = _plan(GreedyPlanner, [(4096, 0, 0), (4096, 1, 1), (4096, 2, 2)])
    assert [p.offset(i) for i in range(3)] == [0, 0, 0]
    assert p.arena_size() == p.lower_bound() == 4096


def test_overlaps_and_render_catch_a_broken_plan():
    class Stacked(GreedyPlanner):
        def _place(self):
            return np.zeros(len(self), np.int64)

    p = _plan(Stacked, WORKED)
    assert (0, 1) in p.overlaps() and (0, 4) in p.overlaps()
    assert (2, 3) in p.overlaps() and (0, 3) not in p.overlaps()
    assert "!" in p.render(40)
    assert "!" not in _plan(GreedyPlanner, WORKED).render(40)


def test_render_draws_each_step():
    picture = _plan(GreedyPlanner, WORKED).render(width=56)
    lines = picture.splitlines()
    assert lines[0].startswith("arena 1792 bytes, 5 buffers")
    assert len(lines) == 1 + 6
    assert all(len(line) == len("   0 |") + 56 + 1 for line in lines[1:])
    # step 0 holds b0 (from column 0) and b4 (from 1664 * 56 // 1792 = 52)
    assert lines[1][6] == "0" and lines[1][6 + 52] == "4" and "1" not in lines[1]


def test_zero_size_buffers_and_empty_plans():
    assert GreedyPlanner().arena_size() == 0 and GreedyPlanner().lower_bound() == 0
    p = _plan(GreedyPlanner, [(0, 0, 3), (100, 0, 3)])
    assert p.arena_size() == 128 and p.overlaps() == []


def test_bad_buffers_are_rejected():
    with pytest.raises(ValueError, match="first <= last"):
        GreedyPlanner().add_buffer(10, 3, 2)
    with pytest.raises(ValueError, match="size >= 0"):
        GreedyPlanner().add_buffer(-1, 0, 0)


def test_adding_a_buffer_replans():
    p = _plan(GreedyPlanner, [(100, 0, 1)])
    assert p.arena_size() == 128
    p.add_buffer(200, 1, 2)
    assert p.offset(0) == 256 and p.arena_size() == 384


buffers = st.lists(
    st.tuples(st.integers(0, 5000), st.integers(0, 30), st.integers(0, 10)).map(
        lambda t: (t[0], t[1], t[1] + t[2])
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(buffers)
def test_greedy_plan_is_valid_and_between_bounds(bufs):
    greedy = _plan(GreedyPlanner, bufs)
    linear = _plan(LinearPlanner, bufs)
    assert greedy.overlaps() == []
    assert linear.overlaps() == []
    assert all(greedy.offset(i) % ALIGN == 0 for i in range(len(bufs)))
    assert all(greedy.offset(i) + s <= greedy.arena_size() for i, (s, _, _) in enumerate(bufs))
    assert greedy.lower_bound() <= greedy.arena_size() <= linear.arena_size()


def test_two_thousand_buffers_plan_without_overlap():
    rng = np.random.default_rng(0)
    p = GreedyPlanner()
    for _ in range(2000):
        first = int(rng.integers(0, 600))
        p.add_buffer(int(rng.integers(1, 1 << 20)), first, first + int(rng.integers(0, 40)))
    assert p.overlaps() == []
    assert p.lower_bound() <= p.arena_size() <= 1.2 * p.lower_bound()

"""What several `facto-edge` commands share beside the error path (cli_errors.py): option
parsers. The commands live in cli.py, plan_cli.py and bench/cli.py; each imports these
modules, none imports another."""

from __future__ import annotations

from facto_edge.errors import FactoEdgeError


def parse_shape(value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise FactoEdgeError(
            f"--input-shape must look like 3x32x32 (CxHxW, positive sizes), found {value!r}"
        )
    return shape  # type: ignore[return-value]

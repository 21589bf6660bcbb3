"""What every `facto-edge` command shares: one error path and option parsers. The
commands live in cli.py, plan_cli.py and bench/cli.py; each imports this module, none
imports another."""

from __future__ import annotations

import functools
import sys

import click

from facto_edge.errors import FactoEdgeError


def friendly_errors(fn):
    """Turn FactoEdgeError into `error: message` and exit 1, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FactoEdgeError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def parse_shape(value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise FactoEdgeError(f"--input-shape must look like 3x32x32 (CxHxW), found {value!r}")
    return shape  # type: ignore[return-value]

"""What several `facto-edge` commands share beside the error path (cli_errors.py): option
parsers. The commands live in cli.py, plan_cli.py and bench/cli.py; each imports these
modules, none imports another."""

from __future__ import annotations

from facto_edge.errors import FactoEdgeError


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    """'3x32x32' (CxHxW) or '40x98' (CxL, a 1-D model) as a tuple of positive sizes."""
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise FactoEdgeError(
            "--input-shape must look like 3x32x32 (CxHxW) or 40x98 (CxL), positive sizes, "
            f"found {value!r}"
        )
    return shape


def parse_norm(value: str | None, option: str) -> str | list[float] | None:
    """--mean/--std: comma-separated numbers, or a preset name (imagenet, cifar, none)."""
    if value is None or not value[:1].isdigit() and not value.startswith((".", "-")):
        return value
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise FactoEdgeError(
            f"{option} must be comma-separated numbers (0.5,0.5,0.5) or a preset "
            f"(imagenet, cifar, none), found {value!r}"
        ) from None


def parse_lr_groups(value: str | None) -> dict[str, float] | None:
    """--lr-groups: comma-separated GROUP=MULTIPLIER pairs (bn=10,head=0.5), each group
    once and known (runtime/param_groups.py), each multiplier a number >= 0."""
    if value is None:
        return None
    from facto_edge.runtime.param_groups import GROUPS

    out: dict[str, float] = {}
    for pair in value.split(","):
        group, sep, number = (s.strip() for s in pair.partition("="))
        try:
            multiplier = float(number) if sep else None
        except ValueError:
            multiplier = None
        if multiplier is None or not group:
            raise FactoEdgeError(
                f"--lr-groups must look like bn=10,head=0.5 (GROUP=MULTIPLIER, groups "
                f"{', '.join(GROUPS)}), found {value!r}"
            )
        if group not in GROUPS:
            raise FactoEdgeError(
                f"--lr-groups: unknown group {group!r}; the groups are {', '.join(GROUPS)}"
            )
        if group in out:
            raise FactoEdgeError(f"--lr-groups gives {group!r} twice, found {value!r}")
        if not (multiplier >= 0 and multiplier != float("inf")):
            raise FactoEdgeError(
                f"--lr-groups: the multiplier of {group!r} must be a finite number >= 0, "
                f"found {number!r}"
            )
        out[group] = multiplier
    return out

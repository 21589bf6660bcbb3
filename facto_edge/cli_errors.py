"""The one error path of the command line: whatever stops a command becomes one line on
stderr and a non-zero exit, never a traceback.

    FactoEdgeError      error: <its message>                           exit 1
    OSError             error: <path>: <reason>; <what to do>          exit 1
    MemoryError         error: out of memory ...                       exit 1
    click usage error   error: <click's message> (<command> --help)    exit 2
    Ctrl-C              interrupted                                    exit 130

`FactoGroup` and `FactoCommand` run click in non-standalone mode inside `main`, so this
holds for every command, the group's own parsing included. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno
import sys

import click

from facto_edge.errors import FactoEdgeError

INTERRUPTED = 130
_HINTS = {
    errno.ENOSPC: "free some space, or write elsewhere",
    errno.EDQUOT: "free some space, or write elsewhere",
    errno.EFBIG: "the file size limit (ulimit -f) or the file system's limit is reached; "
    "raise it, or write elsewhere",
    errno.EACCES: "choose a path you may write, or change its permissions",
    errno.EPERM: "choose a path you may write, or change its permissions",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "expected a file, found a folder; choose another path",
    errno.EEXIST: "choose another path",
    errno.ENOENT: "check the path",
    errno.ENOMEM: "lower the batch size or free memory",
}


def os_error_line(e: OSError) -> str:
    """`path: reason; what to do` for an OSError."""
    reason = e.strerror or str(e) or type(e).__name__
    hint = _HINTS.get(e.errno or 0)
    line = reason + (f"; {hint}" if hint else "")
    if e.filename is None:
        return line
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{where}: {line}"


def error_line(e: BaseException) -> tuple[str, int] | None:
    """(line for stderr, exit code) of an error the CLI reports; None for a bug."""
    if isinstance(e, FactoEdgeError):
        return f"error: {e}", 1
    if isinstance(e, OSError):
        return f"error: {os_error_line(e)}", 1
    if isinstance(e, MemoryError):
        what = f" ({e})" if str(e) else ""
        return f"error: out of memory{what}: lower --batch-size, or free memory", 1
    if isinstance(e, click.Abort | KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if isinstance(e, click.ClickException):
        ctx = getattr(e, "ctx", None)
        where = f" ({ctx.command_path} --help lists the options)" if ctx else ""
        return f"error: {e.format_message()}{where}", e.exit_code
    return None


class _OneErrorPath:
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - sorted by error_line
            reported = error_line(e)
            if reported is None:
                raise
            click.secho(reported[0], fg="red" if reported[1] != INTERRUPTED else None, err=True)
            sys.exit(reported[1])
        sys.exit(rv if isinstance(rv, int) else 0)


class FactoGroup(_OneErrorPath, click.Group):
    """A click group whose commands fail in one line (see the module docstring)."""


class FactoCommand(_OneErrorPath, click.Command):
    """A stand-alone click command that fails in one line (see the module docstring)."""

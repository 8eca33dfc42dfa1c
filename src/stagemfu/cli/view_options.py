"""The options of the human-readable views (``--top``, ``--all``, ``--columns``, ``--base``,
``--full-names``) and ``--top-kernels``, spelled once for every command that prints tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from stagemfu.report.render.view import BASES, DEFAULT_ROWS, TableView


def top_kernels_option(default: int, help: str) -> Callable[[Callable], Callable]:
    """``--top-kernels N``: how many kernels a command lists (per stage, or changed most); the
    command receives it as ``top``."""
    return click.option(
        "--top-kernels", "top", type=click.IntRange(min=1), default=default, show_default=True, help=help
    )


def view_options(*, full_names: bool = False) -> Callable[[Callable], Callable]:
    """Add the view options; the command receives them as one ``view`` keyword (a :class:`TableView`).

    ``full_names`` adds ``--full-names`` (commands whose tables are keyed by range name).
    """

    def decorate(fn: Callable) -> Callable:
        options = [
            click.option(
                "--top",
                "top_rows",
                type=click.IntRange(min=1),
                default=DEFAULT_ROWS,
                show_default=True,
                help="Rows shown per table in the terminal and Markdown (postprocess sorts its tables by GPU "
                "busy time, largest first); a line says how many were left out (JSON, CSV and SQLite hold "
                "every row).",
            ),
            click.option("--all", "all_rows", is_flag=True, help="Show every row of every table (no --top limit)."),
            click.option(
                "--columns",
                metavar="NAME,...",
                default=None,
                help="Columns shown in the terminal and Markdown besides the names, as printed or in snake "
                "case, a prefix being enough ('mfu_kernel,wall_ms', 'mfu' for every MFU column); a table "
                "without any of them is shown whole. By default a terminal shows what fits its width, "
                "kernel and wall MFU first.",
            ),
            click.option(
                "--base",
                "bases",
                metavar="BASE,...",
                default=None,
                help=f"Time bases whose columns are shown: {', '.join(BASES)} (default: all that fit).",
            ),
        ]
        if full_names:
            options.append(
                click.option(
                    "--full-names",
                    is_flag=True,
                    help="Show every PyTorch emit_nvtx call ('aten::mul, seq = 4, op_id = 9, sizes = ...') as its "
                    "own range; by default such ranges are grouped by operator ('aten::mul') in the terminal "
                    "and Markdown (JSON, CSV and SQLite keep the full names).",
                )
            )
        wrapped = _collect(fn, full_names=full_names)
        for option in reversed(options):
            wrapped = option(wrapped)
        return wrapped

    return decorate


def _collect(fn: Callable, *, full_names: bool) -> Callable:
    """The command with its view flags gathered into ``view``."""
    import functools

    @functools.wraps(fn)
    def command(*args: Any, top_rows: int, all_rows: bool, columns: str | None, bases: str | None, **kw: Any) -> Any:
        view = TableView(
            rows=None if all_rows else top_rows,
            columns=_split(columns),
            bases=_split(bases),
            full_names=bool(kw.pop("full_names", False)) if full_names else False,
        )
        return fn(*args, view=view, **kw)

    return command


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())

"""Options declared once: a typed dataclass field carries its default, range, help and --help group.

A tool's options object is a frozen dataclass whose fields are made with :func:`option`.
From it come, with nothing restated:

- validation (:func:`validate_fields`, called from the dataclass's ``__post_init__``), so the
  Python API refuses what the command line refuses, with the same one-line message;
- the click parameters (:func:`click_options`) and a command whose ``--help`` lists them by
  group with examples (:class:`GroupedCommand`);
- the options object itself from click's parsed values (:func:`from_click`).

Rules that tie two options together stay in the dataclass's ``__post_init__``: they are
about the tool, not about one option.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from shared.errors import EXIT_INTERRUPTED, EXIT_USAGE, UsageError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_META = "fluxframe_option"


@dataclass(frozen=True)
class OptionSpec:
    """How one field appears on the command line and what values it accepts."""

    help: str
    group: str
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False  # minimum itself excluded (> rather than >=)
    choices: tuple[str, ...] | None = None
    # A bool field whose command-line flag turns it off (e.g. save_frames <- --no-frames).
    off_flag: str | None = None
    # Shown instead of the default in --help (e.g. "the video's").
    default_text: str | None = None
    hidden: bool = False  # an API-only field: no command-line option
    metavar: str | None = None


def option(
    default: Any,
    help: str,
    group: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    choices: Sequence[str] | None = None,
    off_flag: str | None = None,
    default_text: str | None = None,
    hidden: bool = False,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring)."""
    spec = OptionSpec(
        help=help,
        group=group,
        minimum=minimum,
        maximum=maximum,
        min_open=min_open,
        choices=tuple(choices) if choices is not None else None,
        off_flag=off_flag,
        default_text=default_text,
        hidden=hidden,
        metavar=metavar,
    )
    return field(default=default, metadata={_META: spec})


def flag_name(name: str) -> str:
    """The command-line spelling of a field name: search_depth -> --search-depth."""
    return "--" + name.replace("_", "-")


def _specs(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], OptionSpec, Any]]:
    """(field, spec, resolved type) of every declared option of ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if isinstance(spec, OptionSpec):
            out.append((f, spec, hints[f.name]))
    return out


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _range_text(spec: OptionSpec) -> str:
    low = "" if spec.minimum is None else f"{'>' if spec.min_open else '>='} {spec.minimum:g}"
    if spec.maximum is None:
        return low
    if spec.minimum is None:
        return f"<= {spec.maximum:g}"
    return f"within [{spec.minimum:g}, {spec.maximum:g}]"


def validate_fields(obj: Any) -> None:
    """Refuse any declared field of ``obj`` outside its range or choices (UsageError, one line)."""
    for f, spec, hint in _specs(type(obj)):
        value = getattr(obj, f.name)
        base, optional = _base_type(hint)
        if value is None:
            if not optional:
                raise UsageError(f"{flag_name(f.name)} needs a value")
            continue
        where = spec.off_flag or flag_name(f.name)
        if spec.choices is not None and value not in spec.choices:
            raise UsageError(f"{where} must be one of {', '.join(spec.choices)}, got {value!r}")
        if base in (int, float) and not isinstance(value, bool):
            number = float(value)
            too_low = spec.minimum is not None and (number < spec.minimum or (spec.min_open and number == spec.minimum))
            too_high = spec.maximum is not None and number > spec.maximum
            if not math.isfinite(number) or too_low or too_high:
                raise UsageError(f"{where} must be {_range_text(spec) or 'a finite number'}, got {value}")


def _click_type(base: Any, spec: OptionSpec) -> Any:
    if spec.choices is not None:
        return click.Choice(spec.choices)
    if base is int:
        low = None if spec.minimum is None else int(spec.minimum)
        high = None if spec.maximum is None else int(spec.maximum)
        return click.IntRange(low, high, min_open=spec.min_open) if (low, high) != (None, None) else int
    if base is float:
        if spec.minimum is None and spec.maximum is None:
            return float
        return click.FloatRange(spec.minimum, spec.maximum, min_open=spec.min_open)
    if base is Path:
        return click.Path(path_type=Path)
    return base


class GroupedOption(click.Option):
    """A click option that remembers its --help group."""

    def __init__(self, *args: Any, group: str = "Options", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


def click_options(cls: type[Any]) -> Callable[[F], F]:
    """Decorator adding one click option per declared field of ``cls`` (declaration order in --help)."""
    params: list[click.Option] = []
    for f, spec, hint in _specs(cls):
        if spec.hidden:
            continue
        base, _ = _base_type(hint)
        show: bool | str = True if spec.default_text is None else spec.default_text
        if base is bool:
            name = spec.off_flag or flag_name(f.name)
            params.append(GroupedOption([name, f.name], is_flag=True, default=False, help=spec.help, group=spec.group))
            continue
        params.append(
            GroupedOption(
                [flag_name(f.name), f.name],
                type=_click_type(base, spec),
                default=f.default,
                show_default=show if f.default is not None or spec.default_text else False,
                help=spec.help,
                group=spec.group,
                metavar=spec.metavar,
            )
        )

    def decorate(func: F) -> F:
        existing: list[click.Parameter] = getattr(func, "__click_params__", [])
        # click applies decorators bottom-up and reverses the list; keep declaration order.
        func.__click_params__ = existing + list(reversed(params))  # type: ignore[attr-defined]
        return func

    return decorate


def from_click(cls: type[T], values: dict[str, Any], **extra: Any) -> T:
    """Build ``cls`` from click's parsed values: off-flags inverted, unknown keys ignored."""
    kwargs: dict[str, Any] = {}
    for f, spec, hint in _specs(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        base, _ = _base_type(hint)
        if base is bool and spec.off_flag:
            value = not value
        kwargs[f.name] = value
    kwargs.update(extra)
    return cls(**kwargs)


def given_on_command_line(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def exit_one_line(prog: str, exc: click.ClickException | click.Abort) -> NoReturn:
    """Click's usage error (or Abort) as one line and its exit code, like every other error of the tools.

    Click prints usage, a hint and the error on three lines; ``PROG: error: ...`` with exit code 2
    is what scripts and the other errors of FluxFrame give.
    """
    if isinstance(exc, click.Abort):
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    message = " ".join(exc.format_message().split())
    click.echo(f"{prog}: error: {message}", err=True)
    sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)


class GroupedCommand(click.Command):
    """A command whose --help lists options by group and ends with examples; errors in one line.

    ``examples`` are (command line, what it does) pairs. A bare call (no arguments at all)
    prints the usage line and how to get help, with exit code 2.
    """

    def __init__(self, *args: Any, prog: str, examples: Sequence[tuple[str, str]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prog = prog
        self.examples = list(examples)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        general: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is None:
                continue
            if isinstance(param, GroupedOption):
                groups.setdefault(param.group, []).append(record)
            else:
                general.append(record)
        if general:
            groups["General"] = general
        for group, records in groups.items():
            with formatter.section(group):
                formatter.write_dl(records)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.examples:
            with formatter.section("Examples"):
                for line, what in self.examples:
                    formatter.write_text(f"{what}:")
                    with formatter.indentation():
                        formatter.write_text(f"$ {line}")
        super().format_epilog(ctx, formatter)

    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not argv:
            click.echo(self.get_usage(click.Context(self, info_name=self.prog)), err=True)
            click.echo(f"Try '{self.prog} --help' for the options and examples.", err=True)
            sys.exit(EXIT_USAGE)
        kwargs["standalone_mode"] = False
        try:
            code = super().main(argv, *rest, **kwargs)
        except (click.ClickException, click.Abort) as exc:
            exit_one_line(self.prog, exc)
        sys.exit(code if isinstance(code, int) else 0)

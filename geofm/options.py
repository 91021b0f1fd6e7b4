"""A stage's options, declared once: its library signature plus a small table.

The single source of an option is its stage's library function: the keyword-only
parameter gives the name, the default and the type (``Literal[...]`` gives choices), and
the Google docstring's ``Args:`` entry gives the help. What a signature cannot say (a
flag name kept for compatibility, an argparse ``type=`` from :mod:`geofm.cliargs`, a
required or repeated flag, a mutually exclusive group, a different command-line default)
goes into a per-stage table of :class:`Cli` entries. From these declarations:

* :func:`add_arguments` builds a subcommand's flags (``geofm <stage>``) and the shared
  flags of ``geofm run`` (:mod:`geofm.pipeline`);
* :func:`library_kwargs` turns parsed flags into the library call's keyword arguments;
* ``geofm run``'s YAML keys are the same parameter names (``chip: {chip_size: 256}``);
* ``pipelines/sagemaker_pipeline.py`` makes its pipeline parameters from them;
* :func:`geofm.manifest.call_config` records every option of a call in ``run.json``.

Adding an option to a stage: add the keyword-only parameter (with its default) and its
``Args:`` entry to the library function; add a :class:`Cli` entry to the stage's table
only if the flag needs something the signature cannot say. The CLI flag, the ``geofm
run`` key and the ``run.json`` config follow; ``tests/test_options.py`` checks it.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Cli", "Option", "declare", "add_arguments", "library_kwargs", "docstring_args",
           "MISSING"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: "not given" marker for :attr:`Cli.default` (``None`` is a real default).
MISSING: Any = _Missing()


@dataclass(frozen=True)
class Cli:
    """What a library signature cannot say about an option's command-line flag.

    Attributes:
        flags: option strings (default ``--name-with-dashes``; ``--no-name`` for a
            boolean that defaults to True).
        type: argparse ``type=`` (e.g. :func:`geofm.cliargs.positive_int`).
        choices: allowed values, where the annotation is not a ``Literal``.
        required: the flag must be given (a positional library parameter).
        action: argparse action other than the default (``"append"``, or an Action
            class such as :class:`geofm.cliargs.DateRangeBound`).
        metavar: argparse ``metavar``.
        help: command-line help that replaces the docstring's (only where the CLI value
            differs in form from the library's, e.g. a comma list).
        default: the command line's default when it differs from the library's (e.g.
            reader processes chosen from the CPU count).
        group: name of a mutually exclusive group (required if any of its members is).
        convert: parsed value -> library value (e.g. split a comma list).
        cli: False keeps the option off the command line (library and YAML only).
        title: argparse argument-group title the flag is listed under.
        dest: the argparse ``dest`` when it must differ from the parameter's name (two
            declarations on one parser that share a name).
    """

    flags: tuple[str, ...] = ()
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    required: bool = False
    action: str | builtins.type[argparse.Action] | None = None
    metavar: str | None = None
    help: str | None = None
    default: Any = MISSING
    group: str | None = None
    convert: Callable[[Any], Any] | None = None
    cli: bool = True
    title: str | None = None
    dest: str | None = None


@dataclass(frozen=True)
class Option:
    """One declared option of a stage.

    Attributes:
        name: the library parameter's name (= ``run.json`` config key, ``geofm run``
            YAML key, argparse ``dest``).
        default: the library default (:data:`MISSING` for a required parameter).
        help: the docstring's ``Args:`` entry, as plain text.
        annotation: the parameter's annotation, as written.
        choices: allowed values (from ``Literal`` or :attr:`Cli.choices`), or None.
        cli: the command-line details.
    """

    name: str
    default: Any
    help: str
    annotation: str
    choices: tuple[Any, ...] | None = None
    cli: Cli = field(default_factory=Cli)

    @property
    def flags(self) -> tuple[str, ...]:
        """The option strings of the flag."""
        if self.cli.flags:
            return self.cli.flags
        dashed = self.name.replace("_", "-")
        return (f"--no-{dashed}",) if self.is_negated else (f"--{dashed}",)

    @property
    def dest(self) -> str:
        """The argparse ``dest`` (the parameter's name unless :attr:`Cli.dest` says)."""
        return self.cli.dest or self.name

    @property
    def flag(self) -> str:
        """The main option string (``--chip-size``)."""
        return self.flags[0]

    @property
    def is_bool(self) -> bool:
        """A switch (boolean default, no argparse type)."""
        return isinstance(self.default, bool) and self.cli.type is None

    @property
    def is_negated(self) -> bool:
        """A boolean that defaults to True: its flag (``--no-x``) turns it off."""
        return self.is_bool and self.default is True

    @property
    def cli_default(self) -> Any:
        """The command line's default (the library's unless the table says otherwise)."""
        if self.cli.default is not MISSING:
            return self.cli.default
        if self.cli.action == "append":
            return []
        return None if self.default is MISSING else self.default

    @property
    def kind(self) -> type:
        """``bool``, ``int``, ``float`` or ``str``: the value's type, for parameters."""
        for candidate in (bool, int, float):
            if isinstance(self.default, candidate) and (candidate is not int
                                                        or not isinstance(self.default, bool)):
                return candidate
        words = set(re.findall(r"[A-Za-z_]+", self.annotation))
        for name, candidate in (("bool", bool), ("int", int), ("float", float)):
            if words & {name} and not words & {"str", "Sequence", "list", "tuple"}:
                return candidate
        return str

    def help_text(self) -> str:
        """Help for argparse: the CLI's or the docstring's text, plus the default."""
        text = self.cli.help or self.help
        default = self.cli_default
        if self.is_negated and not self.cli.help:
            text = f"{text.rstrip('.')} (on by default; {self.flag} turns it off)"
        elif not self.is_bool and default not in (None, "", [], ()) and "default" not in text:
            shown = ",".join(map(str, default)) if isinstance(default, list | tuple) \
                else default
            text = f"{text.rstrip('.')} (default {shown})"
        return text.replace("%", "%%")


def _clean(text: str) -> str:
    """Docstring markup -> plain text: ``code``, :role:`~a.b` -> b, whitespace joined."""
    text = re.sub(r":[a-z]+:`~?([^`<]*?)\s*<[^`>]*>`", r"\1", text)
    text = re.sub(r":[a-z]+:`~([^`]*)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = re.sub(r":[a-z]+:`([^`]*)`", r"\1", text)
    text = text.replace("``", "")
    return " ".join(text.split())


def docstring_args(func: Callable[..., Any]) -> dict[str, str]:
    """The ``Args:`` (or ``Attributes:``) entries of a Google docstring, as plain text."""
    doc = inspect.getdoc(func) or ""
    entries: dict[str, list[str]] = {}
    lines = doc.splitlines()
    inside, indent, current = False, None, None
    for line in lines:
        stripped = line.strip()
        if not inside:
            inside = stripped in ("Args:", "Arguments:", "Attributes:")
            continue
        if not stripped:
            continue
        level = len(line) - len(line.lstrip())
        if level == 0:
            break  # the next section (Returns:, Raises:, ...)
        if indent is None:
            indent = level
        match = re.match(r"(\*{0,2}\w+)\s*(\([^)]*\))?:\s*(.*)", stripped)
        if level == indent and match:
            current = match.group(1).lstrip("*")
            entries[current] = [match.group(3)]
        elif current is not None:
            entries[current].append(stripped)
    return {name: _clean(" ".join(parts)) for name, parts in entries.items()}


def _literal_choices(annotation: str) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` in an annotation string (``X | None`` allowed)."""
    match = re.search(r"Literal\[([^\]]*)\]", annotation)
    if not match:
        return None
    value = ast.literal_eval(f"({match.group(1)},)")
    return tuple(value)


def declare(func: Callable[..., Any], table: Mapping[str, Cli] | None = None
            ) -> dict[str, Option]:
    """The declared options of a library function, by parameter name, in signature order.

    Every keyword-only parameter is an option; a positional parameter is one only when
    ``table`` names it (``root`` as ``--root``, say).

    Args:
        func: the stage's library function (a :func:`geofm.manifest.stage_entry`
            wrapper is looked through).
        table: :class:`Cli` entries for what the signature cannot say.

    Returns:
        ``{name: Option}``.

    Raises:
        TypeError: ``table`` names a parameter the function does not have, or an option
            has no docstring entry (a programming error that tests catch).
    """
    table = dict(table or {})
    params = inspect.signature(func).parameters
    unknown = sorted(set(table) - set(params))
    if unknown:
        raise TypeError(f"{func.__qualname__} has no parameter(s) {', '.join(unknown)}")
    helps = docstring_args(func)
    options: dict[str, Option] = {}
    for name, param in params.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY and name not in table:
            continue
        if name not in helps:
            raise TypeError(f"{func.__qualname__}: option {name!r} has no Args: entry in "
                            "the docstring; document it there (it is the option's help)")
        cli = table.get(name, Cli())
        annotation = param.annotation if isinstance(param.annotation, str) \
            else inspect.formatannotation(param.annotation)
        if annotation is inspect.Parameter.empty:
            annotation = ""
        choices = tuple(cli.choices) if cli.choices is not None else \
            _literal_choices(annotation)
        default = MISSING if param.default is inspect.Parameter.empty else param.default
        options[name] = Option(name=name, default=default, help=helps[name],
                               annotation=annotation, choices=choices, cli=cli)
    return options


def add_arguments(parser: argparse.ArgumentParser | Any, options: Iterable[Option], *,
                  override: bool = False) -> None:
    """Add one flag per option (those with ``cli=True``) to ``parser``.

    Args:
        parser: an argparse parser (or argument group).
        options: the declared options.
        override: the flags only override another source (``geofm run``'s YAML): no
            flag is required or grouped, and a flag not given leaves None.
    """
    groups: dict[str, Any] = {}
    titled: dict[str, Any] = {}
    options = [o for o in options if o.cli.cli]
    required_groups = {o.cli.group for o in options if o.cli.group and o.cli.required}
    for option in options:
        target = parser
        if option.cli.title and not override:
            if option.cli.title not in titled:
                titled[option.cli.title] = parser.add_argument_group(option.cli.title)
            target = titled[option.cli.title]
        if option.cli.group and not override:
            if option.cli.group not in groups:
                groups[option.cli.group] = target.add_mutually_exclusive_group(
                    required=option.cli.group in required_groups)
            target = groups[option.cli.group]
        kwargs: dict[str, Any] = {"dest": option.dest, "help": option.help_text()}
        if option.is_bool:
            kwargs["action"] = "store_const"
            kwargs["const"] = not option.default
            kwargs["default"] = None if override else option.default
        else:
            kwargs["default"] = None if override else option.cli_default
            if option.cli.action is not None:
                kwargs["action"] = option.cli.action
            if option.cli.type is not None:
                kwargs["type"] = option.cli.type
            elif option.kind in (int, float) and option.choices is None:
                kwargs["type"] = option.kind
            if option.choices is not None:
                kwargs["choices"] = option.choices
            if option.cli.metavar is not None:
                kwargs["metavar"] = option.cli.metavar
            if option.cli.required and not option.cli.group and not override:
                kwargs["required"] = True
        target.add_argument(*option.flags, **kwargs)


def library_kwargs(args: argparse.Namespace, options: Iterable[Option], *,
                   given_only: bool = False) -> dict[str, Any]:
    """The library call's keyword arguments from parsed flags (each converted).

    Args:
        args: parsed arguments (dests are the option names).
        options: the declared options.
        given_only: leave out flags that were not given (None; for ``geofm run``).
    """
    out: dict[str, Any] = {}
    for option in options:
        if not option.cli.cli or not hasattr(args, option.dest):
            continue
        value = getattr(args, option.dest)
        if given_only and value is None:
            continue
        if option.cli.convert is not None:
            value = option.cli.convert(value)
        out[option.name] = value
    return out


def comma_list(value: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` (a :attr:`Cli.convert` for comma-list flags)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)

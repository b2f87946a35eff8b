"""Command-line options declared once, as dataclass fields: ``option(default, help)`` holds an option's
default and help, :func:`add_dataclass_arguments` builds its argparse flag, :func:`from_args` reads the
dataclass back from the parsed arguments (in the spirit of transformers' HfArgumentParser).

Exists so that ``TrainConfig``, ``TextOptions`` and ``ClipOptions`` are the only declaration of the
options of ``hbfast train``, ``sweep`` and ``train-clip``, and every ``--help`` shows every default.

Flags: a field ``lang_weights`` is ``--lang-weights``; a bool that defaults to False is a switch
``--x``; a bool that defaults to True is ``--no-x`` (read back as ``args.no_x``, then ``x = not no_x``).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def option(default, help: str, *, choices=None, cli: bool = True):
    """A dataclass field that is also a command-line option (``cli=False``: a field the CLI never sets)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "cli": cli})


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default: the value, "on" / "off" for switches, "required";
    an option whose default is None says in its own help what it then means."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if action.nargs == 0 and action.const is True:  # a switch (store_true)
            shown = "off"
        elif action.default is None:
            return text
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


def _value_type(annotation):
    """int / float / str of ``int``, ``float | None``, ``Optional[str]``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in args if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"options take one value type, got {annotation}")
        return args[0]
    return annotation


def cli_fields(cls) -> list:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def add_dataclass_arguments(parser, cls, *, only=None, exclude=(), defaults=None, required=()) -> None:
    """Add one flag per option field of ``cls`` (``only`` / ``exclude``: field names) to ``parser``;
    ``defaults``: this command's own defaults; ``required``: fields this command cannot do without."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    unknown = set(defaults) | set(required) | set(only or ()) | set(exclude)
    unknown -= {f.name for f in cli_fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no options {sorted(unknown)}")
    for f in cli_fields(cls):
        if (only is not None and f.name not in only) or f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        kind = _value_type(hints[f.name])
        if kind is bool:
            if default:
                parser.add_argument("--no-" + flag[2:], dest="no_" + f.name, action="store_true",
                                    help=f.metadata["help"])
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
            continue
        parser.add_argument(flag, dest=f.name, type=kind, default=None if f.name in required else default,
                            choices=f.metadata["choices"], required=f.name in required, help=f.metadata["help"])


def from_args(cls, args: argparse.Namespace, **override):
    """``cls`` from parsed arguments (fields absent from ``args`` keep their defaults), then ``override``."""
    values = {}
    for f in cli_fields(cls):
        if hasattr(args, "no_" + f.name) and f.default is True:
            values[f.name] = not getattr(args, "no_" + f.name)
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    values.update(override)
    return cls(**values)

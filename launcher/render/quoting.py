"""Jinja templates whose every output value is quoted for its language: shell, JSON, or a hostfile word.

Shell templates run with `StrictUndefined` and a `finalize` hook that refuses any value not passed
through a quoting filter (`shquote`, `envname`, `comment`), so a template cannot put a raw user value
on a command line by mistake; the rank table template refuses values not JSON-encoded.
"""
from __future__ import annotations

import functools
import json
import re
import shlex
from typing import Any, Mapping

import jinja2

from launcher.resources import templates_dir

__all__ = ["TemplateValueError", "Safe", "template", "export_lines"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTFILE_WORD = re.compile(r"[A-Za-z0-9._:-]+")


class TemplateValueError(jinja2.TemplateError):
    """A template tried to output a value that did not go through its quoting filter."""


class Safe(str):
    """Text already made safe for the template's language (a quoted shell word, JSON, a comment)."""


@functools.lru_cache(maxsize=65536)
def _quote_text(text: str) -> Safe:
    return Safe(shlex.quote(text))


def _shquote(value: Any) -> Safe:
    return _quote_text(str(value))


@functools.lru_cache(maxsize=4096)
def _envname(value: Any) -> Safe:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise TemplateValueError(f"{value!r} is not an environment variable name")
    return Safe(value)


def export_lines(env: Mapping[str, str], indent: str = "") -> Safe:
    """`export NAME=VALUE` lines (names checked, values shell-quoted) for the env file and host scripts.

    Built here rather than in a template loop because it runs once per rank: 16k ranks would
    otherwise spend most of the render time in per-line template calls.
    """
    return Safe("\n".join(f"{indent}export {_envname(k)}={_quote_text(v)}" for k, v in env.items()))


def _comment(value: Any) -> Safe:
    return Safe(" ".join(str(value).splitlines()))


def _json(value: Any) -> Safe:
    return Safe(json.dumps(str(value)))


def _require_safe(value: Any) -> Any:
    if isinstance(value, Safe):
        return value
    raise TemplateValueError(f"template outputs {value!r} without a quoting filter")


def _hostfile_word(value: Any) -> Any:
    text = str(value)
    if not _HOSTFILE_WORD.fullmatch(text):
        raise TemplateValueError(f"{text!r} cannot appear in a hostfile")
    return text


@functools.cache
def _environment(kind: str, folder: str) -> jinja2.Environment:
    finalize = {"shell": _require_safe, "json": _require_safe, "text": _hostfile_word}[kind]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined,
                             autoescape=False, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=False, finalize=finalize)
    env.filters.update(shquote=_shquote, envname=_envname, comment=_comment, json=_json)
    return env


@functools.cache
def template(name: str) -> jinja2.Template:
    """A template of templates/, with the quoting rules of its kind (shell, JSON, text)."""
    kind = "shell" if name.endswith(".sh.j2") else "json" if name.endswith(".json.j2") else "text"
    return _environment(kind, str(templates_dir())).get_template(name)



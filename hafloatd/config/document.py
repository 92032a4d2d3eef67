"""YAML text into Python data, with where each key is written and which keys are duplicated.

PyYAML's ``SafeLoader``, changed so that no text can make it fail other than with a
``ConfigError`` naming the line and column:

* numbers remember their source text (``YamlInt``, ``YamlFloat``: see ``scalars``);
* nesting deeper than ``MAX_DEPTH`` is refused before PyYAML's recursive composer would
  exhaust the stack;
* a value its explicit tag cannot build (``!!int two``, ``!!bool maybe``) and a character
  YAML forbids (NUL, most control characters) are YAML errors like any other.

The document is walked as nodes before it is built, to record the line of every key path
and report duplicate keys (plain PyYAML silently keeps the last one).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.reader import ReaderError

from hafloatd.config.scalars import YamlFloat, YamlInt
from hafloatd.config.values import clip, join_key, show_key
from hafloatd.errors import ConfigError

# The deepest hafloatd value (control.allowed_users[0]) is 4 nodes down; far deeper is a
# mistake or an attack, and PyYAML's composer recurses once per level.
MAX_DEPTH = 32
# A YAML problem is cut to this many characters (PyYAML quotes tags and tokens in full).
_MAX_PROBLEM_CHARS = 160
_MERGE_TAG = "tag:yaml.org,2002:merge"
# What PyYAML's constructors raise, besides YAMLError, on a value their tag cannot build.
_CONSTRUCT_ERRORS = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError)


@dataclass
class Document:
    data: object
    lines: dict[str, int]  # key path -> 1-based line where it is written
    problems: list[tuple[int | None, str]]  # duplicate keys


def read_yaml(text: str, source: str) -> Document:
    """The one YAML document in ``text``; ``ConfigError`` (naming ``source``) if unreadable."""
    try:
        loader = _Loader(text)  # checks every character at once
    except ReaderError as exc:
        raise ConfigError(_character_problem(exc, text), source=source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(None, {}, [])
        document = Document(None, {}, [])
        _walk_nodes(node, "", document, set())
        document.data = loader.construct_document(node)
        return document
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_problem(exc), source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(clip_problem(f"invalid YAML: {exc}"), source=source) from None
    finally:
        loader.dispose()


def clip_problem(text: str, limit: int = _MAX_PROBLEM_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    line = " ".join(text.splitlines())
    return line if len(line) <= limit else line[:limit] + "…"


class _Loader(yaml.SafeLoader):
    """SafeLoader with a nesting limit, numbers that keep their source text, and
    constructors that fail as YAML errors."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep (hafloatd's keys need 4 at most)",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)
    return YamlInt(value, node.value)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    value: float = loader.construct_yaml_float(node)
    return YamlFloat(value, node.value)


def _guarded(construct: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``construct``, raising ``ConstructorError`` at the node for what it cannot build."""

    def guarded(loader: Any, node: Any) -> Any:
        try:
            result = construct(loader, node)
        except _CONSTRUCT_ERRORS:
            raise _cannot_build(node) from None
        if isinstance(result, types.GeneratorType):  # collections are filled in later
            return _guarded_filling(result, node)
        return result

    return guarded


def _guarded_filling(filling: Iterator[Any], node: yaml.Node) -> Iterator[Any]:
    try:
        yield from filling
    except _CONSTRUCT_ERRORS:
        raise _cannot_build(node) from None


def _cannot_build(node: yaml.Node) -> ConstructorError:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    what = clip(repr(node.value)) if isinstance(node, yaml.ScalarNode) else "this value"
    return ConstructorError(None, None, f"cannot read {what} as {clip(tag)}", node.start_mark)


def _install_constructors() -> None:
    _Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
    _Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
    for tag, construct in list(_Loader.yaml_constructors.items()):
        _Loader.add_constructor(tag, _guarded(construct))


_install_constructors()


def _character_problem(exc: ReaderError, text: str) -> str:
    position = int(exc.position)
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return (
        f"line {line}, column {column}: invalid YAML: character U+{int(exc.character):04X} "
        "is not allowed (write control characters as escapes in a double-quoted string)"
    )


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if exc.context and exc.problem and exc.problem.startswith("but "):
        what = f"{exc.context}, {exc.problem}"  # "expected a single document..., but found..."
    elif exc.context and exc.problem:
        what = f"{exc.problem} ({exc.context})"
    else:
        what = exc.problem or exc.context or "unreadable document"
    return clip_problem(f"{where}invalid YAML: {what}")


def _walk_nodes(node: yaml.Node, path: str, document: Document, seen: set[int]) -> None:
    """Record where each key path is written and report duplicate keys (PyYAML keeps the last)."""
    if id(node) in seen:  # aliases point at a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            child = join_key(path, show_key(key_node.value))
            line = key_node.start_mark.line + 1
            if key_node.value in first_line:
                document.problems.append(
                    (
                        line,
                        f"{child}: duplicate key, first defined on line "
                        f"{first_line[key_node.value]}",
                    )
                )
            else:
                first_line[key_node.value] = line
            document.lines[child] = line
            _walk_nodes(value_node, child, document, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            document.lines[child] = item.start_mark.line + 1
            _walk_nodes(item, child, document, seen)

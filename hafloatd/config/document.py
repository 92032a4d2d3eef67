"""YAML text into Python data, with where each key is written and which keys are duplicated.

PyYAML's ``SafeLoader`` with two changes: ints remember their source text (``YamlInt``),
and the document is walked as nodes before it is built, to record the line of every key
path and report duplicate keys (plain PyYAML silently keeps the last one). Every YAML
problem becomes a ``ConfigError`` with its line and column.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from hafloatd.config.scalars import YamlInt
from hafloatd.config.values import join_key
from hafloatd.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class Document:
    data: object
    lines: dict[str, int]  # key path -> 1-based line where it is written
    problems: list[tuple[int | None, str]]  # duplicate keys


def read_yaml(text: str, source: str) -> Document:
    """The one YAML document in ``text``; ``ConfigError`` (naming ``source``) if unreadable."""
    loader = _Loader(text)
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
        raise ConfigError(f"invalid YAML: {exc}", source=source) from None
    finally:
        loader.dispose()


class _Loader(yaml.SafeLoader):
    """SafeLoader whose ints keep their source text (for ``control.mode``)."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)
    return YamlInt(value, node.value)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if exc.context and exc.problem and exc.problem.startswith("but "):
        what = f"{exc.context}, {exc.problem}"  # "expected a single document..., but found..."
    elif exc.context and exc.problem:
        what = f"{exc.problem} ({exc.context})"
    else:
        what = exc.problem or exc.context or "unreadable document"
    return f"{where}invalid YAML: {what}"


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
            child = join_key(path, key_node.value)
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

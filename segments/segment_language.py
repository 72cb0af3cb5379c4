"""The segment language: a definition (YAML or JSON) validated into a tree of conditions. Pure.

    name: shoe_lovers_at_risk
    description: bought shoes often, not lately
    where:
      all:
        - purchases_30d >= 2                     # shorthand for {field, op, value}
        - {field: favourite_category, op: "==", value: shoes}
        - days_since_last_purchase > 60
        - did "Product Added" in last 24h and not "Order Completed"
        - any: [{segment: rfm_champions}, {not: {did: "Order Completed", within: 7d}}]

Field names are checked against the catalogue (``segments.fields``) and values against the
field's type here, so a bad definition fails with a clear message before any SQL exists.

Limits, so that no definition can exhaust the process that parses or compiles it (``check_limits``):
conditions nest at most ``MAX_DEPTH`` levels (all, any, not and each segment reference count as a
level), a definition expands to at most ``MAX_CONDITIONS`` conditions and ``MAX_VALUES`` list values
once its segment references are expanded (a segment used twice counts twice), and its document is at
most ``MAX_DEFINITION_BYTES``. Every walk over a document before these checks pass is iterative, and
the recursive ones (validation, the compiler, SQLAlchemy's) only ever see a bounded tree: the deepest
definition allowed takes about 540 frames of Python's 1,000 to compile into its refresh statement.
"""

import difflib
import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from spoor.segments import SegmentsError
from spoor.segments.segment_fields import FIELDS, FieldType

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
MAX_LIST = 1000
MAX_STRING = 256
MAX_WITHIN_S = 366 * 86400
MAX_DEPTH = 32  # levels of all/any/not/segment on any path, references expanded
MAX_CONDITIONS = 2000  # conditions once references are expanded, each use of a segment counted
MAX_VALUES = 10_000  # values of in / not in lists, the same way
MAX_DEFINITION_BYTES = 256 * 1024  # a definition's text, or its document as compact JSON
# Lists and objects nested in a document, whatever they hold: a condition level is at most two of
# them (all -> list -> condition), so valid definitions stay well inside.
_MAX_NESTING = 2 * MAX_DEPTH + 8
COMPARISONS = ("==", "!=", ">", ">=", "<", "<=")
OPS = (*COMPARISONS, "in", "not in")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FIELD_SHORTHAND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$", re.S)
_EVENT_SHORTHAND = re.compile(
    r'^\s*did\s+"([^"]{1,256})"\s+in\s+last\s+(\d{1,6}\s*[smhd])(?:\s+and\s+not\s+"([^"]{1,256})")?\s*$', re.S)


class SegmentDefinitionError(SegmentsError):
    """A definition that cannot be used; the message says where and why."""


def parse_duration(value: Any) -> int:
    """'24h', '30m', '7d', '90s' or a number of seconds -> seconds (1 s .. 366 days)."""
    if isinstance(value, bool):
        raise ValueError("a duration is like '24h', '30m', '7d' or a number of seconds")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d{1,9})\s*([smhd])\s*", value)):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration like '24h', '30m', '7d' or a number of seconds")
    if not 1 <= seconds <= MAX_WITHIN_S:
        raise ValueError("a duration must be between 1 second and 366 days")
    return seconds


Scalar = Union[bool, int, float, Decimal, str, None]


class FieldCondition(BaseModel):
    """``field op value``. ``== null`` / ``!= null`` test for a missing value."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str
    op: Literal[OPS]
    value: Scalar | list[Scalar]

    @model_validator(mode="before")
    @classmethod
    def _stored_numbers(cls, data: Any, info: ValidationInfo) -> Any:
        """A stored definition has its decimal values as JSON strings (pydantic's JSON mode writes a
        Decimal so): read back, they are numbers again. A user's "2" for a number field stays an error."""
        if not (info.context or {}).get("stored") or not isinstance(data, dict):
            return data
        spec = FIELDS.get(data.get("field")) if isinstance(data.get("field"), str) else None
        if spec is None or spec.type is not FieldType.NUMBER:
            return data
        value = data.get("value")
        return {**data, "value": [_stored_number(v) for v in value] if isinstance(value, list)
                else _stored_number(value)}

    @model_validator(mode="after")
    def _check_types(self) -> "FieldCondition":
        spec = FIELDS.get(self.field)
        if spec is None:
            close = difflib.get_close_matches(self.field[:80], FIELDS, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ValueError(f"unknown field {self.field[:80]!r}; {hint}known fields: {', '.join(sorted(FIELDS))}")
        values = self.value if isinstance(self.value, list) else [self.value]
        if self.op in ("in", "not in"):
            if not isinstance(self.value, list) or not 1 <= len(self.value) <= MAX_LIST:
                raise ValueError(f"'{self.op}' needs a list of 1 to {MAX_LIST} values")
        elif isinstance(self.value, list):
            raise ValueError(f"'{self.op}' compares with one value, not a list")
        for value in values:
            if value is None:
                if self.op not in ("==", "!="):
                    raise ValueError(f"null can only be compared with == or != (field {self.field})")
            elif spec.type is FieldType.NUMBER:
                if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
                    raise ValueError(f"type mismatch: {self.field} is a number, got {type(value).__name__} "
                                     f"{str(value)[:40]!r}")
            elif spec.type is FieldType.STRING:
                if not isinstance(value, str):
                    raise ValueError(f"type mismatch: {self.field} is a string, got {type(value).__name__}")
                if len(value) > MAX_STRING:
                    raise ValueError(f"string values are limited to {MAX_STRING} characters")
                if self.op in (">", ">=", "<", "<="):
                    raise ValueError(f"{self.field} is a string: use ==, !=, in or not in")
        return self


def _stored_number(value: Any) -> Any:
    if isinstance(value, str) and len(value) <= 64:
        try:
            return Decimal(value)
        except InvalidOperation:
            pass
    return value


class EventCondition(BaseModel):
    """The user did the named event at least ``at_least`` times in the last ``within``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    did: str = Field(min_length=1, max_length=MAX_STRING)
    within: int
    at_least: int = Field(1, ge=1, le=1_000_000)

    _duration = field_validator("within", mode="before")(lambda v: parse_duration(v))


class SegmentRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    segment: str = Field(pattern=NAME_PATTERN)


class AllOf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    all: list["Condition"] = Field(min_length=1, max_length=100)


class AnyOf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    any: list["Condition"] = Field(min_length=1, max_length=100)


class NotOf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    not_: "Condition" = Field(alias="not")


def _expand_shorthand(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if len(value) > 2 * MAX_STRING + 100:
        raise ValueError("condition text is too long")
    if m := _EVENT_SHORTHAND.match(value):
        did = {"did": m.group(1), "within": m.group(2).replace(" ", "")}
        if m.group(3) is None:
            return did
        return {"all": [did, {"not": {"did": m.group(3), "within": did["within"]}}]}
    if m := _FIELD_SHORTHAND.match(value):
        try:
            literal = json.loads(m.group(3), parse_float=Decimal)
        except ValueError:
            raise ValueError(f"in {value[:80]!r}: the value must be a JSON number, a \"quoted string\", "
                             "true, false or null") from None
        if isinstance(literal, (dict, list)):
            raise ValueError(f"in {value[:80]!r}: the value must be a single number or string")
        return {"field": m.group(1), "op": m.group(2), "value": literal}
    raise ValueError(f"cannot read condition {value[:80]!r}: expected 'field op value' or "
                     "'did \"Event\" in last 24h [and not \"Event\"]'")


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key, tag in (("field", "field"), ("did", "event"), ("segment", "segment"), ("all", "all"),
                         ("any", "any"), ("not", "not"), ("not_", "not")):
            if key in value:
                return tag
        return None
    return {FieldCondition: "field", EventCondition: "event", SegmentRef: "segment", AllOf: "all",
            AnyOf: "any", NotOf: "not"}.get(type(value))


Condition = Annotated[
    Union[Annotated[FieldCondition, Tag("field")], Annotated[EventCondition, Tag("event")],
          Annotated[SegmentRef, Tag("segment")], Annotated[AllOf, Tag("all")], Annotated[AnyOf, Tag("any")],
          Annotated[NotOf, Tag("not")]],
    Discriminator(_kind, custom_error_type="unknown_condition",
                  custom_error_message="a condition has one of the keys field, did, segment, all, any, not"),
]


class SegmentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field("", max_length=2000)
    where: Condition

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        _check_document(data)  # before anything recursive sees it
        return _walk(data)

    @model_validator(mode="after")
    def _limits(self) -> "SegmentSpec":
        check_limits(self)
        # As stored: shorthands expanded (``did ... and not ...`` takes about three times its text).
        _check_size(len(self.model_dump_json(by_alias=True)))
        return self


def _walk(data: Any) -> Any:
    """Expand string shorthands anywhere in the tree before validation."""
    if isinstance(data, dict):
        out = dict(data)
        if "where" in out:
            out["where"] = _walk_condition(out["where"])
        return out
    return data


def _walk_condition(node: Any) -> Any:
    node = _expand_shorthand(node)
    if isinstance(node, dict):
        node = dict(node)
        for key in ("all", "any"):
            if isinstance(node.get(key), list):
                node[key] = [_walk_condition(child) for child in node[key]]
        if "not" in node:
            node["not"] = _walk_condition(node["not"])
    return node


def _check_document(data: Any) -> None:
    """Size, nesting and NUL characters of a document as parsed, in one iterative walk that stops at the
    first limit passed (so a YAML alias bomb costs no more than the limit). The size counted is at most
    the document's length as compact JSON, so a definition as stored always passes again."""
    size = 0
    stack = [(data, 1, 0)]  # (value, lists and objects around it, condition level or 0)
    while stack:
        value, nesting, level = stack.pop()
        if level > MAX_DEPTH:
            raise SegmentDefinitionError(_too_deep(False))
        if nesting > _MAX_NESTING:
            raise SegmentDefinitionError(f"lists and objects nest more than {_MAX_NESTING} levels deep "
                                         f"(conditions may nest at most {MAX_DEPTH})")
        if isinstance(value, dict):
            size += 2 * len(value) + 1 if value else 2  # {} and the : and , between items
            for key, item in value.items():
                _check_text(key)
                size += _scalar_size(key)
                if nesting == 1 and key == "where":
                    stack.append((item, nesting + 1, 1))
                elif level and key in ("all", "any") and isinstance(item, list):
                    size += len(item) + 1
                    _check_size(size)
                    stack.extend((child, nesting + 2, level + 1) for child in item)
                elif level and key in ("not", "not_"):
                    stack.append((item, nesting + 1, level + 1))
                else:
                    stack.append((item, nesting + 1, 0))
        elif isinstance(value, (list, tuple)):
            size += len(value) + 1
            _check_size(size)
            stack.extend((item, nesting + 1, 0) for item in value)
        else:
            _check_text(value)
            size += _scalar_size(value)
        _check_size(size)


def _check_size(size: int) -> None:
    if size > MAX_DEFINITION_BYTES:
        raise SegmentDefinitionError(f"the definition is larger than {MAX_DEFINITION_BYTES:,} bytes as JSON "
                                     "(the limit)")


def _check_text(value: Any) -> None:
    if isinstance(value, str) and "\x00" in value:
        raise SegmentDefinitionError("text in a definition cannot contain NUL (\\u0000) characters")


def _scalar_size(value: Any) -> int:
    """At most the length of the value in JSON."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, bool) or value is None:
        return 4
    if isinstance(value, int):
        return max(1, value.bit_length() * 3 // 10)  # digits, without str() (refused past 4,300 digits)
    return len(str(value)) if isinstance(value, Decimal) else 1


def _too_deep(expanded: bool) -> str:
    return (f"conditions nest more than {MAX_DEPTH} levels deep"
            f"{' once segment references are expanded' * expanded}"
            f" (the limit is {MAX_DEPTH}: all, any, not and each segment reference count as a level)")


Resolver = Callable[[str], "SegmentSpec | None"]


def check_limits(spec: "SegmentSpec", resolve: Resolver | None = None) -> set[str]:
    """Depth, conditions and list values of ``spec``: its own, or with ``resolve`` once every segment it
    references is expanded (as the compiler expands them), which also finds unknown references and
    cycles. Iterative, and stops at the first limit passed: an exponential expansion (segments that
    each use the previous one twice) costs at most ``MAX_CONDITIONS`` steps. Returns the referenced
    segments (with ``resolve``); raises SegmentDefinitionError saying which limit and what it is."""
    conditions = values = 0
    references: set[str] = set()
    stack = [(spec.where, 1, (spec.name,))]  # (condition, level, chain of segments expanded to reach it)
    while stack:
        node, level, chain = stack.pop()
        expanded = len(chain) > 1
        if level > MAX_DEPTH:
            raise SegmentDefinitionError(_too_deep(expanded))
        conditions += 1
        if conditions > MAX_CONDITIONS:
            raise SegmentDefinitionError(
                f"more than {MAX_CONDITIONS:,} conditions"
                f"{' once segment references are expanded (a segment used twice counts twice)' * expanded}"
                f" (the limit is {MAX_CONDITIONS:,})")
        if isinstance(node, (AllOf, AnyOf)):
            stack.extend((child, level + 1, chain) for child in (node.all if isinstance(node, AllOf) else node.any))
        elif isinstance(node, NotOf):
            stack.append((node.not_, level + 1, chain))
        elif isinstance(node, FieldCondition) and isinstance(node.value, list):
            values += len(node.value)
            if values > MAX_VALUES:
                raise SegmentDefinitionError(
                    f"more than {MAX_VALUES:,} list values{' once segment references are expanded' * expanded}"
                    f" (the limit is {MAX_VALUES:,})")
        elif isinstance(node, SegmentRef) and resolve is not None:
            if node.segment in chain:
                raise SegmentDefinitionError(f"segment reference cycle: {' -> '.join((*chain, node.segment))}")
            target = resolve(node.segment)
            if target is None:
                raise SegmentDefinitionError(f"unknown segment {node.segment!r} referenced from {chain[-1]!r}")
            references.add(node.segment)
            stack.append((target.where, level + 1, (*chain, node.segment)))
    return references


AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()
SegmentSpec.model_rebuild()


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "definition"
        lines.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


# libyaml's parser is linear and refuses more than 1,000 levels; PyYAML's own scans a flow collection
# to its end before parsing it, in time quadratic in its depth (2 s at 5,000 levels).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_definition(data: Any, error: type[Exception], max_bytes: int = 1_000_000) -> Any:
    """YAML/JSON text (at most ``max_bytes``) parsed, or an already parsed value as it is; ``error`` says
    why not. PyYAML recurses once per nesting level: a document nested too deeply for it is an error."""
    if isinstance(data, (str, bytes)):
        size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "replace"))
        if size > max_bytes:
            raise error(f"the definition is larger than {max_bytes:,} bytes (the limit)")
        try:
            return yaml.load(data, Loader=_YAML_LOADER)  # noqa: S506 -- a safe loader
        except RecursionError:
            raise error("the document nests too deeply to be read "
                        f"(conditions may nest at most {MAX_DEPTH} levels)") from None
        except (yaml.YAMLError, ValueError) as err:
            if "maximum nesting depth" in str(err):
                raise error("the document nests too deeply to be read "
                            f"(conditions may nest at most {MAX_DEPTH} levels)") from None
            raise error(f"not valid YAML/JSON: {err}") from None
    return data


def parse_segment(data: Any) -> SegmentSpec:
    """A dict (or YAML/JSON text) -> SegmentSpec, or SegmentDefinitionError saying what is wrong."""
    return _validate(load_definition(data, SegmentDefinitionError, MAX_DEFINITION_BYTES), stored=False)


def parse_stored(text: str) -> SegmentSpec:
    """A definition as PostgreSQL returns it (``definition::text``) -> SegmentSpec, or
    SegmentDefinitionError. Read as text rather than by the driver, whose JSON decoder recurses."""
    if len(text) > 2 * MAX_DEFINITION_BYTES:  # jsonb's text adds a space after each : and , (x1.5 at most)
        raise SegmentDefinitionError(f"the definition is larger than {MAX_DEFINITION_BYTES:,} bytes as JSON "
                                     "(the limit)")
    try:
        data = json.loads(text, parse_float=Decimal)
    except RecursionError:
        raise SegmentDefinitionError(f"the stored document nests too deeply to be read (conditions may nest "
                                     f"at most {MAX_DEPTH} levels)") from None
    except ValueError as err:
        raise SegmentDefinitionError(f"the stored document is not valid JSON: {err}") from None
    return _validate(data, stored=True)


def _validate(data: Any, stored: bool) -> SegmentSpec:
    try:
        return SegmentSpec.model_validate(data, context={"stored": stored})
    except ValueError as err:
        if isinstance(err, ValidationError):
            raise SegmentDefinitionError(_describe(err)) from None
        raise SegmentDefinitionError(str(err)) from None

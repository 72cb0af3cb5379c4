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
"""

import difflib
import json
import re
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from segments import SegmentsError
from segments.fields import FIELDS, FieldType

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
MAX_LIST = 1000
MAX_STRING = 256
MAX_WITHIN_S = 366 * 86400
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
        return _walk(data)


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


def load_definition(data: Any, error: type[Exception]) -> Any:
    """YAML/JSON text (at most 1 MB) parsed, or an already parsed value as it is; ``error`` says why not."""
    if isinstance(data, (str, bytes)):
        if len(data) > 1_000_000:
            raise error("definition is larger than 1 MB")
        try:
            return yaml.safe_load(data)
        except yaml.YAMLError as err:
            raise error(f"not valid YAML/JSON: {err}") from None
    return data


def parse_segment(data: Any) -> SegmentSpec:
    """A dict (or YAML/JSON text) -> SegmentSpec, or SegmentDefinitionError saying what is wrong."""
    data = load_definition(data, SegmentDefinitionError)
    try:
        return SegmentSpec.model_validate(data)
    except ValueError as err:
        if isinstance(err, ValidationError):
            raise SegmentDefinitionError(_describe(err)) from None
        raise SegmentDefinitionError(str(err)) from None

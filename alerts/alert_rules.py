"""Alert rules: a versioned YAML file, validated with pydantic, reloaded when it changes.

    version: 1
    rules:
      - id: orders-drop
        metric: orders                  # a name from alerts.series.METRICS
        resolution: 1m                  # 1m, 5m or 60m windows
        dimension: global               # global, source:<name>, category:<name>, source:* ...
        detector: {kind: seasonal, direction: drop, sensitivity: 4, min_expected: 20}
        fire_after: 3                   # consecutive anomalous windows to fire
        resolve_after: 5                # consecutive normal windows to resolve
        severity: critical
        runbook: https://runbooks.example/orders-drop
        summary: Orders dropped

A ``*`` dimension makes one series (and one detector) per matching dimension.
An invalid file raises ``RulesError`` naming the problem; a reload that fails
keeps the rules that were loaded before (and says why).
"""

import os
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spoor.alerts import AlertsError
from spoor.alerts.detectors import SeasonalConfig, SeasonalDetector, ThresholdConfig, ThresholdDetector
from spoor.alerts.series import METRICS
from spoor.metric_columns import RESOLUTIONS

SUPPORTED_VERSIONS = (1,)
DEFAULT_RULES = Path(__file__).resolve().parent / "rules.yaml"  # what ships; SPOOR_ALERT_RULES_PATH overrides


class RulesError(AlertsError):
    """The rules file is missing, not YAML, or not a valid rules document."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeasonalSpec(_Strict):
    kind: Literal["seasonal"]
    direction: Literal["drop", "spike", "both"] = "drop"
    sensitivity: float = Field(4.0, gt=0, le=50)
    alpha: float = Field(0.1, gt=0, le=1)
    season: Literal["none", "day", "week"] = "day"
    season_min_periods: int = Field(2, ge=1)
    season_alpha: float = Field(0.3, gt=0, le=1)
    smooth_slots: int = Field(2, ge=0, le=60)
    warmup_windows: int = Field(60, ge=0)
    min_expected: float = Field(20.0, ge=0)
    max_level_change: float | None = Field(0.35, gt=0)
    drift_alpha: float = Field(0.02, gt=0, le=1)
    adapt_after: int = Field(240, ge=1)
    evidence_windows: int = Field(1, ge=1, le=60)
    evidence_sensitivity: float | None = Field(None, gt=0, le=50)
    learn_band: float = Field(2.0, gt=0)
    hold_evidence: float | None = Field(None, gt=0, le=50)
    hold_band: float = Field(0.5, ge=0)
    poisson_floor: bool = True
    min_scale: float = Field(0.0, ge=0)

    def build(self, resolution_s: int) -> SeasonalDetector:
        fields = self.model_dump(exclude={"kind"})
        return SeasonalDetector(SeasonalConfig(**fields), resolution_s)


class ThresholdSpec(_Strict):
    kind: Literal["threshold"]
    above: float | None = None
    below: float | None = None
    min_volume: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _one_bound(self):
        if self.above is None and self.below is None:
            raise ValueError("a threshold detector needs 'above' or 'below'")
        return self

    def build(self, _resolution_s: int) -> ThresholdDetector:
        return ThresholdDetector(ThresholdConfig(self.above, self.below, self.min_volume))


DetectorSpec = Annotated[Union[SeasonalSpec, ThresholdSpec], Field(discriminator="kind")]


class Rule(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    metric: str
    resolution: Literal["1m", "5m", "60m"] = "1m"
    dimension: Annotated[str, Field(min_length=1, max_length=200)] = "global"
    detector: DetectorSpec
    fire_after: int = Field(3, ge=1, le=1000)
    resolve_after: int = Field(5, ge=1, le=1000)
    severity: Literal["info", "warning", "critical"] = "warning"
    runbook: Annotated[str, Field(max_length=500)] | None = None
    summary: Annotated[str, Field(max_length=500)] | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
        return metric

    @field_validator("dimension")
    @classmethod
    def _dimension_shape(cls, dimension: str) -> str:
        if dimension != "global" and not (":" in dimension and dimension.split(":", 1)[0] in ("source", "category")):
            raise ValueError("dimension is 'global', 'source:<name>' or 'category:<name>' (a '*' name matches all)")
        return dimension

    @property
    def resolution_s(self) -> int:
        return RESOLUTIONS[self.resolution]

    def matches(self, dimension: str) -> bool:
        if self.dimension.endswith(":*"):
            return dimension.startswith(self.dimension[:-1])
        return dimension == self.dimension


class RuleSet(_Strict):
    version: int
    rules: list[Rule]

    @field_validator("version")
    @classmethod
    def _supported(cls, version: int) -> int:
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"rules file version {version} is not supported (supported: {SUPPORTED_VERSIONS})")
        return version

    @model_validator(mode="after")
    def _unique_ids(self):
        ids = [rule.id for rule in self.rules]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule ids: {', '.join(duplicates)}")
        return self

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise RulesError(f"no rule with id {rule_id!r}")


def parse_rules(text: str, origin: str = "<rules>") -> RuleSet:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RulesError(f"{origin}: not valid YAML: {err}") from None
    try:
        return RuleSet.model_validate(document)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in err.errors())
        raise RulesError(f"{origin}: {problems}") from None


def load_rules(path: str | Path) -> RuleSet:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise RulesError(f"cannot read rules file {path}: {err}") from None
    return parse_rules(text, str(path))


class RulesFile:
    """The rules of a file, re-read when its modification time changes (no restart needed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.mtime_ns = os.stat(self.path).st_mtime_ns
        self.rules = load_rules(self.path)
        self.last_error: str | None = None

    def reload_if_changed(self) -> bool:
        """True if new rules were loaded. A broken edit keeps the old rules (see ``last_error``)."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError as err:
            self.last_error = str(err)
            return False
        if mtime == self.mtime_ns:
            return False
        self.mtime_ns = mtime
        try:
            self.rules = load_rules(self.path)
        except RulesError as err:
            self.last_error = str(err)
            return False
        self.last_error = None
        return True

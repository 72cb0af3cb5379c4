"""The alert lifecycle of one series: inactive -> pending -> firing -> resolved. Pure.

Hysteresis: ``fire_after`` consecutive anomalous windows fire the alert (the
first one makes it pending; a verdict whose evidence spans k windows counts as
k), and ``resolve_after`` consecutive windows that are not anomalous resolve
it. A pending alert that sees a normal window is cancelled (recorded, never
notified) and the series is inactive again. Each episode is one alert: it keeps
the window where it started and its worst evidence.
"""

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from spoor.alerts.detectors import Verdict


class AlertStatus(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"  # was pending, a normal window came before it fired (never notified)


def fingerprint(rule_id: str, metric: str, dimension: str) -> str:
    """Stable identity of an alert series: the same rule on the same series is one alert."""
    return hashlib.sha256(f"{rule_id}\x00{metric}\x00{dimension}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Transition:
    """What changed in one window: a new status, with the episode's evidence."""

    fingerprint: str
    status: AlertStatus
    started_at: datetime  # end of the first anomalous window of the episode
    at: datetime  # end of the window that caused this transition
    evidence: dict  # the latest verdict's, plus the worst score seen in the episode


@dataclass
class AlertLifecycle:
    fingerprint: str
    fire_after: int = 3
    resolve_after: int = 5
    status: AlertStatus | None = None  # None: inactive
    anomalous_run: int = 0
    normal_run: int = 0
    started_at: datetime | None = None
    worst: dict = field(default_factory=dict)

    def step(self, verdict: Verdict) -> Transition | None:
        """Advance one window; return the transition it caused, if any."""
        if verdict.reason == "no_data":
            return None  # a missing window neither fires nor resolves
        if verdict.anomalous:
            # Evidence summed over several windows counts for each of them.
            self.anomalous_run = max(self.anomalous_run + 1, verdict.span)
            self.normal_run = 0
            if self.status in (None, AlertStatus.RESOLVED, AlertStatus.CANCELLED):
                self.status, self.started_at, self.worst = AlertStatus.PENDING, verdict.at, {}
                self._keep_worst(verdict)
                if self.anomalous_run < self.fire_after:
                    return self._transition(verdict)
            self._keep_worst(verdict)
            if self.status == AlertStatus.PENDING and self.anomalous_run >= self.fire_after:
                self.status = AlertStatus.FIRING
                return self._transition(verdict)
            return None
        self.normal_run += 1
        self.anomalous_run = 0
        if self.status == AlertStatus.PENDING:
            self.status = AlertStatus.CANCELLED
            transition = self._transition(verdict)
            self.status = None
            return transition
        if self.status == AlertStatus.FIRING and self.normal_run >= self.resolve_after:
            self.status = AlertStatus.RESOLVED
            return self._transition(verdict)
        return None

    @property
    def firing(self) -> bool:
        return self.status == AlertStatus.FIRING

    def _keep_worst(self, verdict: Verdict) -> None:
        if not self.worst or abs(verdict.score) > abs(self.worst.get("score", 0)):
            self.worst = verdict.evidence()

    def _transition(self, verdict: Verdict) -> Transition:
        return Transition(self.fingerprint, self.status, self.started_at, verdict.at,
                          {**verdict.evidence(), "worst": dict(self.worst)})

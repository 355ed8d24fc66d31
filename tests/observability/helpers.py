"""Reading ``/metrics`` and PromQL expressions for the observability tests."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.sagas.helpers import make_counters, run, start


@dataclass
class Scrape:
    """The samples of one exposition, by sample name (``saga_total``, ``..._bucket``)."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    types: dict[str, str] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            value
            for sample_labels, value in self.samples.get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def label_names(self, name: str) -> set[str]:
        return {key for labels, _ in self.samples.get(name, []) for key in labels}

    def label_values(self, name: str, label: str) -> set[str]:
        return {labels[label] for labels, _ in self.samples.get(name, []) if label in labels}


def parse_exposition(text: str) -> Scrape:
    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            scrape.samples[sample.name].append((dict(sample.labels), sample.value))
            scrape.types[sample.name] = family.type
    return scrape


def scrape_metrics(client: Client | None = None) -> Scrape:
    """GET /metrics from this process, as Prometheus would from a web process."""
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200, response.content[:500]
    return parse_exposition(response.content.decode())


def run_mixed_sagas() -> None:
    """One saga of each outcome, in this process: every saga family then has samples."""
    make_counters("s1", "s2", "s3", "s4", "s5")
    run(start("test.five_steps"))
    run(start("test.five_steps", fail="s3"))
    run(start("test.five_steps", fail="s4", compensation_fails=["s2"]))


# --- PromQL -------------------------------------------------------------------------------

# Functions are recognised by the "(" after them; these words stand alone.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "Inf", "NaN",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()")


@dataclass
class Expression:
    text: str
    metrics: set[str]
    # (metric, label, operator, value) of each label matcher
    matchers: list[tuple[str, str, str, str]]
    grouping: set[str]


def parse_promql(text: str) -> Expression:
    """The metric names, label matchers and grouping labels an expression uses.

    A regex reading, not a parser: enough for the expressions of our rules and dashboards
    (selectors, aggregations, functions, arithmetic, ranges, Grafana's $variables).
    """
    matchers = []
    for match in _SELECTOR.finditer(text):
        metric = match.group(1) or ""
        for label, operator, value in _MATCHER.findall(match.group(2)):
            matchers.append((metric, label, operator, value))
    rest = _SELECTOR.sub(lambda m: m.group(1) or "", text)
    rest = re.sub(r"\[[^\]]*\]", "", rest)
    grouping = {
        label.strip()
        for group in _GROUPING.findall(rest)
        for label in group.split(",")
        if label.strip()
    }
    rest = _GROUPING.sub("", rest)
    rest = _STRING.sub("", rest)
    metrics = {name for name in _IDENTIFIER.findall(rest) if name not in _KEYWORDS}
    return Expression(text=text, metrics=metrics, matchers=matchers, grouping=grouping)


# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def check_expression(expression: Expression, scrape: Scrape) -> list[str]:
    """What in ``expression`` the exposition does not have; empty when all of it exists."""
    problems = []
    if not expression.metrics:
        problems.append("uses no metric")
    for metric in sorted(expression.metrics):
        if metric not in scrape.samples:
            problems.append(f"unknown metric {metric}")
    for metric, label, operator, value in expression.matchers:
        names = [metric] if metric else sorted(expression.metrics)
        if not any(label in scrape.label_names(name) | TARGET_LABELS for name in names):
            problems.append(f"{metric} has no label {label}")
        elif (
            operator == "="
            and metric
            and label not in TARGET_LABELS
            and value not in scrape.label_values(metric, label)
        ):
            problems.append(f'{metric}{{{label}="{value}"}} matches no series')
    available: set[str] = set(TARGET_LABELS)
    for metric in expression.metrics:
        available |= scrape.label_names(metric)
    for label in sorted(expression.grouping - available):
        problems.append(f"grouping label {label} is on none of {sorted(expression.metrics)}")
    return problems


def expressions_of_dashboard(dashboard: dict[str, Any]) -> list[str]:
    found = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(target["expr"] for target in panel.get("targets", []) if "expr" in target)
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return found

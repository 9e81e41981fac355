"""Reading a process's Prometheus metrics the way Prometheus does: GET /metrics on its ops
port, parsed by prometheus_client's own text parser. The one scraper the tests use."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Scrape:
    """Every sample of one /metrics answer."""

    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample `name` (as exposed: a counter's is `..._total`) with exactly these
        labels; None if the process does not expose it (yet)."""
        return next((s.value for s in self.samples if s.name == name and s.labels == labels), None)

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample `name` whose labels include these (0 if there is none)."""
        return sum(
            s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()
        )


def scrape(port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> Scrape:
    """The metrics a process (coordinator or shard: its `metrics_port`) exposes now."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    return Scrape([s for family in text_string_to_metric_families(text) for s in family.samples])


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample of a process's metrics now: Scrape.value of a fresh scrape."""
    return scrape(port).value(name, **labels)

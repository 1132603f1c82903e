"""Metric families with plain-Python cells, exposed through one prometheus_client
collector.

An increment is ``cell.value += 1`` (tens of nanoseconds) where prometheus_client's own
metric objects take a lock each time: at hundreds of thousands of events per second that
is the difference. The HTTP thread only reads; a histogram's count is derived from its
buckets at scrape time, so the two always agree.

Labels are fixed at construction or taken from closed sets by the caller: no value seen
on the wire ever becomes a label unless it was checked against such a set first.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)


class Cell:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class Histo:
    """One histogram series: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Family:
    """A metric family: name, help, type, label names and its series by label values."""

    def __init__(self, kind: str, name: str, documentation: str, labels: Sequence[str] = (),
                 bounds: Sequence[float] = (), limit: int = 4096) -> None:
        assert kind in ("counter", "gauge", "histogram")
        self.kind, self.name, self.documentation = kind, name, documentation
        self.labels = tuple(labels)
        self.bounds = tuple(sorted(bounds))
        self.limit = limit
        self.series: dict[tuple[str, ...], Cell | Histo] = {}

    def cell(self, *values: str) -> Cell:
        assert self.kind != "histogram" and len(values) == len(self.labels)
        found = self.series.get(values)
        if found is None:
            found = Cell()
            if len(self.series) < self.limit:  # past it: counted nowhere, never unbounded
                self.series[values] = found
        assert isinstance(found, Cell)
        return found

    def histo(self, *values: str) -> Histo:
        assert self.kind == "histogram" and len(values) == len(self.labels)
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = Histo(self.bounds)
        assert isinstance(found, Histo)
        return found

    def collect(self) -> Metric:
        items = list(self.series.items())
        if self.kind == "counter":
            name = self.name[:-6] if self.name.endswith("_total") else self.name
            counter = CounterMetricFamily(name, self.documentation, labels=self.labels)
            for values, cell in items:
                counter.add_metric(values, cell.value)  # type: ignore[union-attr]
            return counter
        if self.kind == "gauge":
            gauge = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
            for values, cell in items:
                gauge.add_metric(values, cell.value)  # type: ignore[union-attr]
            return gauge
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, histo in items:
            assert isinstance(histo, Histo)
            counts, total = list(histo.counts), histo.sum
            cumulative, running = [], 0
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                running += count
                cumulative.append((_bound(bound), float(running)))
            histogram.add_metric(list(values), cumulative, total)
        return histogram


def _bound(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


class Collector:
    """A prometheus_client collector over a list of families."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()

    def describe(self) -> Iterator[Metric]:
        return self.collect()

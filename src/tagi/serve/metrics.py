"""Prometheus metrics of one server (its own registry, so several apps in one process do not collide).

``GET /metrics`` serves them in the Prometheus text format: requests by endpoint and status, request
latency, rows and time per model call by kind (prefill of joining requests, decode step, both in one call,
or a whole batch), queue depth, cached adapters and their
bytes, adapter generation time, adapter requests answered from the cache, the prefix cache's hits,
misses and size, and generated tokens. Requests refused for their body size (413, before any route runs)
are counted under their endpoint too.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "tagi_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "tagi_request_latency_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tagi_batch_size",
            "rows in one model call, by kind: prefill (requests joining the running batch), decode (one step "
            "of it), fused (a step of it and the requests joining it, in one call), batch (a whole batch "
            "decoded start to end: T5, seeded requests)",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tagi_batch_seconds",
            "time of one model call, by kind (see tagi_batch_size)",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.adapter_seconds = Histogram(
            "tagi_adapter_generation_seconds",
            "hypernetwork call per adapter",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.adapter_cache_hits = Counter(
            "tagi_adapter_cache_hits", "adapter requests answered from the cache", registry=r
        )
        self.tokens = Counter("tagi_completion_tokens", "tokens generated", registry=r)
        self.queue_depth = Gauge("tagi_queue_depth", "rows waiting to be decoded", registry=r)
        self.adapters = Gauge("tagi_adapters_cached", "generated adapters held in memory", registry=r)
        self.adapter_bytes = Gauge("tagi_adapter_cache_bytes", "bytes of cached adapter tensors", registry=r)

    def track(
        self, depth: Callable[[], float], count: Callable[[], float], nbytes: Callable[[], float]
    ) -> None:
        """Gauges read at scrape time."""
        self.queue_depth.set_function(depth)
        self.adapters.set_function(count)
        self.adapter_bytes.set_function(nbytes)

    def track_prefixes(self, store) -> None:
        """The prefix store's hits and misses (counters) and its size (gauges), read at scrape time from
        :class:`tagi.backbones.prefix_store.PrefixStore`."""
        self.registry.register(_PrefixCollector(store))

    def observe_batch(self, kind: str, rows: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(rows)
        self.batch_seconds.labels(kind).observe(seconds)

    def model_calls(self) -> dict[str, dict[str, float]]:
        """``{kind: {"calls", "rows", "seconds"}}`` of the model calls so far (what the histograms count)."""
        out: dict[str, dict[str, float]] = {}
        for metric, field in ((self.batch_size, "rows"), (self.batch_seconds, "seconds")):
            for sample in metric.collect()[0].samples:
                kind = out.setdefault(sample.labels["kind"], {"calls": 0.0, "rows": 0.0, "seconds": 0.0})
                if sample.name.endswith("_count"):
                    kind["calls"] = sample.value
                elif sample.name.endswith("_sum"):
                    kind[field] = sample.value
        return out

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PrefixCollector:
    """Prometheus view of a prefix store (its counts live in the store, so they are read, not copied)."""

    def __init__(self, store) -> None:
        self.store = store

    def collect(self):
        st = self.store
        yield CounterMetricFamily(
            "tagi_prefix_cache_hits", "instruction prefixes taken from the prefix cache", st.hits
        )
        yield CounterMetricFamily(
            "tagi_prefix_cache_misses", "instruction prefixes computed (then kept)", st.misses
        )
        yield GaugeMetricFamily(
            "tagi_prefix_cache_bytes", "bytes of cached prefix keys and values", st.nbytes
        )
        yield GaugeMetricFamily("tagi_prefix_cache_entries", "instruction prefixes held", len(st))

"""Prometheus metrics: the controller's counters, every node's reachability, path length, RTT,
direct link and bytes, and the helper's Apply latency, named by Prometheus' conventions
(``wg_netmanager_`` prefix, base units, ``_total`` counters).

One truth for both ways of reading them: :func:`families` builds the metric families from
plain data - the controller passes its core's state (the opt-in HTTP endpoint, ``--metrics``,
served on localhost from the event loop: no thread reads the core), ``wg_netmanager metrics``
passes what Controller1 answers. The library is prometheus-client (Debian:
python3-prometheus-client), needed only when metrics are asked for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from wg_netmanager.common import allow_openssl

log = logging.getLogger("wg_netmanager.controller")
allow_openssl()  # (prometheus-client imports ssl)

PREFIX = "wg_netmanager_"


def _counter_family(name: str) -> tuple[str, str, dict[str, str]]:
    """A controller counter's (metric, help, labels): tx_probe -> sent datagrams by type, ..."""
    from wg_netmanager.controller.wire import TYPE_NAMES

    kinds = set(TYPE_NAMES.values())
    if name == "tx_bytes":
        return "admin_sent_bytes", "Admin bytes sent.", {}
    if name.startswith("tx_") and name[3:] in kinds:
        return "admin_datagrams_sent", "Admin datagrams sent, by type.", {"type": name[3:]}
    if name.startswith("tx_records_"):
        return "records_sent", "Record batches sent, by why.", {"why": name[len("tx_records_"):]}
    if name.startswith("rx_") and name[3:] in kinds:
        return "admin_datagrams_received", "Admin datagrams received, by type.", {"type": name[3:]}
    if name.startswith("drop_"):
        return "admin_datagrams_dropped", "Admin datagrams or records dropped, by reason.", {"reason": name[5:]}
    if name.startswith("refused_"):
        return "records_refused", "Records refused by the admission rules, by reason.", {"reason": name[8:]}
    return name, f"Controller counter {name}.", {}


def families(counters: Mapping[str, int], nodes: Iterable[Mapping], info: Mapping[str, str],
             apply: Mapping[str, float]) -> list:
    """The metric families. ``nodes``: member_status()/ListNodes entries (rtt_ms None or < 0 =
    unknown); ``info``: name, overlay_ip, version, state; ``apply``: count, seconds, changes."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    out = []
    up = GaugeMetricFamily(PREFIX + "info", "This node (value 1).", labels=["name", "overlay_ip", "version", "state"])
    up.add_metric([info.get("name", ""), info.get("overlay_ip", ""), info.get("version", ""),
                   info.get("state", "up")], 1)
    out.append(up)
    grouped: dict[str, CounterMetricFamily] = {}
    for name, value in sorted(counters.items()):
        metric, help_text, labels = _counter_family(name)
        fam = grouped.get(metric)
        if fam is None:
            fam = grouped[metric] = CounterMetricFamily(PREFIX + metric, help_text, labels=list(labels))
        fam.add_metric(list(labels.values()), value)
    out += grouped.values()
    labels = ["node", "overlay_ip"]
    reachable = GaugeMetricFamily(PREFIX + "node_reachable", "1 if the node has a path, else 0.", labels=labels)
    left = GaugeMetricFamily(PREFIX + "node_left", "1 if the node announced its departure.", labels=labels)
    hops = GaugeMetricFamily(PREFIX + "node_path_hops", "Hops of the path to the node (1: direct).", labels=labels)
    rtt = GaugeMetricFamily(PREFIX + "node_rtt_seconds", "Path latency to the node.", labels=labels)
    link = GaugeMetricFamily(PREFIX + "node_direct_link_up", "1 if the direct link to the node is up.",
                             labels=labels)
    rx = CounterMetricFamily(PREFIX + "node_received_bytes", "Bytes received from the node over its direct link "
                             "(WireGuard peer); absent while relayed.", labels=labels)
    tx = CounterMetricFamily(PREFIX + "node_sent_bytes", "Bytes sent to the node over its direct link "
                             "(WireGuard peer); absent while relayed.", labels=labels)
    for n in nodes:
        key = [n["name"], n["overlay_ip"]]
        reachable.add_metric(key, 1 if n["reachable"] else 0)
        left.add_metric(key, 1 if n.get("left") else 0)
        link.add_metric(key, 1 if n.get("link") == "up" else 0)
        if n["reachable"]:
            hops.add_metric(key, len(n["via"]) + 1)
            if n.get("rtt_ms") is not None and n["rtt_ms"] >= 0:
                rtt.add_metric(key, n["rtt_ms"] / 1000)
            if not n["via"]:  # (a relayed node's first hop is its relay: its bytes are the relay's)
                rx.add_metric(key, n["rx_bytes"])
                tx.add_metric(key, n["tx_bytes"])
    out += [reachable, left, hops, rtt, link, rx, tx]
    applies = CounterMetricFamily(PREFIX + "helper_applies", "Apply calls to the helper.")
    applies.add_metric([], apply.get("count", 0))
    seconds = CounterMetricFamily(PREFIX + "helper_apply_seconds", "Time spent in Apply calls (with _total: the sum; "
                                  "divide by wg_netmanager_helper_applies_total for the mean).")
    seconds.add_metric([], apply.get("seconds", 0.0))
    changes = CounterMetricFamily(PREFIX + "helper_apply_changes", "Peers and routes changed by Apply calls.")
    changes.add_metric([], apply.get("changes", 0))
    out += [applies, seconds, changes]
    return out


def render(fams: list) -> bytes:
    """The text exposition format of these families."""
    from prometheus_client import CollectorRegistry, generate_latest

    class _Fixed:
        def collect(self):
            return fams

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    return generate_latest(registry)


async def serve(controller, host: str, port: int) -> asyncio.AbstractServer:
    """A minimal HTTP endpoint (GET /metrics) on the event loop: each scrape reads the core's
    state between two of its steps."""
    from prometheus_client import CONTENT_TYPE_LATEST

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            line = request.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] in (b"/metrics", b"/"):
                body = render(controller.metric_families())
                head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
            else:
                body, head = b"not found\n", "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics endpoint", extra={"address": f"{host}:{port}"})
    return server

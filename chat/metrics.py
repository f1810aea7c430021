"""Prometheus metrics of the chat part, registered in the registry the composition root owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ChatMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "messenger_socket_connections", "Connected Socket.IO sessions on this node", registry=registry
        )
        self.messages_sent = Counter("messenger_messages_sent_total", "Messages stored", ["kind"], registry=registry)
        self.messages_flagged = Counter(
            "messenger_messages_flagged_total", "Messages flagged for contact details", registry=registry
        )
        self.ack_latency = Histogram(
            "messenger_send_ack_seconds",
            "Time from receiving message:send to acknowledging it (stored and fanned out)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.errors = Counter(
            "messenger_client_errors_total", "Errors answered to clients", ["code"], registry=registry
        )

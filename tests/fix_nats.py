"""NATS fixtures: a project-local nats-server (JetStream and MQTT) on free ports."""

from __future__ import annotations

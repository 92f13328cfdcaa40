"""Replica fixtures: a hot standby of the test primary, made with pg_basebackup -R."""

from __future__ import annotations

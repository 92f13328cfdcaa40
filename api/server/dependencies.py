"""What the application injects into handlers by name: the settings, built once per process."""

from __future__ import annotations

from litestar.di import NamedDependency

from api.settings import Settings

AppSettings = NamedDependency[Settings]
"""Annotate a handler parameter named ``settings`` with this to receive the application's settings."""

"""Browser fixtures: headless Chromium driven by Playwright."""

from __future__ import annotations

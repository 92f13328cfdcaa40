"""Energy telemetry platform: HTTP API, migrations and connectors over TimescaleDB."""

"""Benchmarks: HTTP ingestion against the direct psycopg pipeline, analytics latency, EnergyGrid pull."""

"""The Docker Compose file and the TimescaleDB installer, checked without a Docker engine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict

from api.settings import PROJECT_ROOT
from api.stream.log import PARTITION_MAPPINGS

INSTALLER = PROJECT_ROOT / "scripts" / "install-timescaledb.sh"


def _compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def test_compose_pins_a_community_timescaledb_image_with_a_healthcheck() -> None:
    db = _compose()["services"]["db"]
    image, tag = db["image"].split(":")
    assert image == "timescale/timescaledb"
    assert tag.endswith("-pg17") and tag[0].isdigit() and "latest" not in tag
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    host_ports = [p.split(":")[-2] for p in db["ports"]]
    assert all(p.replace("${DB_HOST_PORT:-", "").rstrip("}") != "5432" for p in host_ports)


def test_compose_runs_migrations_once_before_the_api() -> None:
    services = _compose()["services"]
    # The log's streams are left to the writers: NATS starts after the migration (its users need the keys).
    assert services["migrate"]["command"] == ["python", "-m", "api", "migrate", "--no-stream"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["nats"]["depends_on"]["broker-users-init"]["condition"] == "service_completed_successfully"
    assert services["writer"]["depends_on"]["nats"]["condition"] == "service_healthy"
    assert services["broker-users"]["pid"] == "service:nats"
    assert services["migrate"]["restart"] == "no"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "/health/ready" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("migrate", "api"):
        assert "@db:5432/telemetry" in services[name]["environment"]["DATABASE_URL"]


def test_compose_migrates_as_the_owner_and_serves_as_the_api_role() -> None:
    services = _compose()["services"]
    owner = conninfo_to_dict(services["migrate"]["environment"]["MIGRATE_DATABASE_URL"].replace("${", "").replace(
        ":-", "_").replace("}", ""))
    assert owner["user"] == "postgres"
    for name in ("migrate", "api"):
        url = services[name]["environment"]["DATABASE_URL"]
        assert url.startswith("postgresql://telemetry_api:"), url
    assert "MIGRATE_DATABASE_URL" not in services["api"]["environment"]


def test_make_dev_key_reuses_a_valid_key_and_keeps_it_private(database, tmp_path: Path) -> None:
    """`make run` keeps one development key (mode 0600) instead of a new admin key on every run."""
    key_file = tmp_path / "dev-api-key"

    def dev_key() -> str:
        result = subprocess.run(["make", "-s", "dev-key", f"DEV_KEY_FILE={key_file}"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "DATABASE_URL": database.app_url})
        assert result.returncode == 0, result.stderr
        assert key_file.stat().st_mode & 0o777 == 0o600
        return key_file.read_text().strip()

    first, second = dev_key(), dev_key()
    assert first == second and first.startswith("etk_")
    with psycopg.connect(database.url) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.api_keys").fetchone()[0] == 1
        conn.execute("UPDATE telemetry.api_keys SET revoked_at = now()")
    third = dev_key()
    assert third != first
    with psycopg.connect(database.url) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.api_keys WHERE revoked_at IS NULL").fetchone()[0] == 1


def test_compose_keeps_the_load_generator_behind_a_profile() -> None:
    services = _compose()["services"]
    assert services["loadgen"]["profiles"] == ["loadgen"]
    assert services["loadgen"]["command"][:3] == ["python", "-m", "loadgen"]
    assert "http://api:8000" in services["loadgen"]["command"]
    assert services["loadgen"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_compose_builds_images_from_the_project_dockerfile() -> None:
    services = _compose()["services"]
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert all(services[name]["build"] == "." for name in ("migrate", "api", "loadgen"))
    assert "COPY sql ./sql" in dockerfile and "SQL_DIR=/app/sql" in dockerfile


def _mirror(apt_etc: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALLER), "--print-mirror"], capture_output=True, text=True,
                          env={**os.environ, "APT_ETC": str(apt_etc)})


def test_installer_takes_the_mirror_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    result = _mirror(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "http://mirror.example/debian"


def test_installer_takes_the_mirror_from_a_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://local.example/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://local.example/debian bookworm main\n"
    )
    result = _mirror(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "http://local.example/debian"


def test_installer_without_a_mirror_points_to_docker_compose(tmp_path: Path) -> None:
    result = _mirror(tmp_path)
    assert result.returncode == 1
    assert "docker compose" in result.stderr.lower()


def test_installer_is_a_no_op_when_timescaledb_is_installed() -> None:
    result = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "building" not in result.stderr


def test_pg_ctl_runs_a_cluster_from_a_relative_data_directory(tmp_path: Path) -> None:
    """`make stop-db` passes `.local/pgdata`: every command must return, whatever the relative path."""
    pg_ctl = str(PROJECT_ROOT / "scripts" / "pg-ctl")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([pg_ctl, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    initdb = run("initdb", "-D", "rel/pgdata", "-s", "-o", "--auth=trust --username=postgres")
    assert initdb.returncode == 0, initdb.stderr
    assert (tmp_path / "rel" / "pgdata" / "PG_VERSION").exists()
    options = f"-c listen_addresses='' -c unix_socket_directories='{tmp_path / 'rel' / 'pgdata'}'"
    started = run("start", "-D", "rel/pgdata", "-l", "rel/pg.log", "-w", "-t", "60", "-o", options)
    assert started.returncode == 0, started.stderr + (tmp_path / "rel" / "pg.log").read_text()
    assert run("status", "-D", "rel/pgdata").returncode == 0
    stopped = run("stop", "-D", "./rel/../rel/pgdata", "-m", "fast")
    assert stopped.returncode == 0, stopped.stderr
    assert run("status", "-D", "rel/pgdata").returncode == 3  # no server running


def test_every_nats_configuration_maps_device_subjects_onto_the_writers_partitions(nats_server) -> None:
    """Compose's NATS and the local one (scripts/local-nats.sh, which the tests and the bench run) store an
    MQTT device's messages on the partition subjects the writers check (api/stream/log.py)."""
    expected = {f'"{source}": "{destination}"' for source, destination in PARTITION_MAPPINGS.items()}
    for conf in (PROJECT_ROOT / "docker" / "nats.conf", nats_server.dir / "nats.conf"):
        text = conf.read_text()
        block = text[text.index("mappings {"):]
        block = block[:block.index("}\n")]
        assert {line.strip() for line in block.splitlines()[1:] if line.strip()} == expected, conf

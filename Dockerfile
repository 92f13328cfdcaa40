# The dashboard's chart library, installed from its lock file (dashboard/package-lock.json).
FROM node:20-bookworm-slim AS dashboard-assets
WORKDIR /dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 SQL_DIR=/app/sql
# The load generator's MQTT transport (--transport mqtt) drives the C MQTT client library.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libmosquitto1 \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY api ./api
COPY energygrid ./energygrid
COPY loadgen ./loadgen
RUN pip install --no-cache-dir .
COPY sql ./sql
# Beside sql/: the API serves the dashboard from /app/dashboard (api/server/dashboard.py).
COPY dashboard/index.html dashboard/app.js dashboard/style.css ./dashboard/
COPY --from=dashboard-assets /dashboard/node_modules ./dashboard/node_modules
USER nobody
EXPOSE 8000
CMD ["python", "-m", "api", "serve"]

FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 SQL_DIR=/app/sql
COPY pyproject.toml README.md ./
COPY api ./api
COPY energygrid ./energygrid
COPY loadgen ./loadgen
RUN pip install --no-cache-dir .
COPY sql ./sql
USER nobody
EXPOSE 8000
CMD ["python", "-m", "api", "serve"]

# The sweeper image: `sweeper launch` / `sweeper worker` on one GPU (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The package first (torch and torchvision pinned by pyproject.toml), so edits to studies/ and
# dashboards/ do not reinstall it.
COPY pyproject.toml README.md ./
COPY sweeper/ sweeper/
RUN pip install .

COPY studies/ studies/
COPY dashboards/ dashboards/

RUN useradd --create-home --uid 1000 sweeper \
    && mkdir -p /app/sweeps/checkpoints /app/data/cache \
    && chown -R sweeper:sweeper /app/sweeps /app/data
USER sweeper
ENV SWEEPER_DATA_DIR=/app/data SWEEPER_CACHE_DIR=/app/data/cache

CMD ["sweeper", "--help"]

# One image for the Ray head, Ray workers and the dashboard (README, "Container").
# Not built on the development machine (it has no Docker engine); linted by hadolint in the tests.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_AUTH_MODE=token \
    RECO_VAR_DIR=/var/lib/reco \
    RECO_DASHBOARD_HOST=0.0.0.0 \
    RECO_SERVE__HOST=0.0.0.0

RUN groupadd --system --gid 10001 reco && useradd --system --uid 10001 --gid reco --create-home reco \
    && mkdir -p /var/lib/reco /opt/reco && chown reco:reco /var/lib/reco /opt/reco

WORKDIR /opt/reco

# dependencies first (cached layer), pinned with hashes: pip refuses anything that differs
COPY --chown=reco:reco requirements.lock pyproject.toml ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
ENV PATH=/opt/venv/bin:$PATH

COPY --chown=reco:reco backend ./backend
COPY --chown=reco:reco jobs ./jobs
COPY --chown=reco:reco registry ./registry
COPY --chown=reco:reco dashboard ./dashboard
COPY --chown=reco:reco deploy ./deploy
COPY --chown=reco:reco serve_config.yaml README.md ./
RUN pip install --no-deps --no-build-isolation -e .

USER 10001:10001
VOLUME ["/var/lib/reco"]
# API (Serve), dashboard, Ray GCS, Ray dashboard/Jobs API, Ray metrics
EXPOSE 8000 8501 6380 8265 8090

# the API's own health route on the head; workers and the dashboard override it in `docker run`
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]

# the whole platform on one container; for a cluster: `ray start ... --block` per node
CMD ["sh", "-c", "reco up --no-sim && exec sleep infinity"]

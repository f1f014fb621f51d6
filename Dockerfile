# One image for the API, the workers and the CLI: `gem-labeler api|worker|serve|prelabel`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Weights live on the `models` volume, so containers start without downloading when it is filled.
    HF_HOME=/models/huggingface \
    MODEL_CACHE_DIR=/models/open_clip \
    DATA_DIR=/data \
    # In a container the API listens on every interface (its default elsewhere is loopback); the port
    # published with `docker run -p` decides who reaches it.
    HOST=0.0.0.0

WORKDIR /app
# Dependencies first, so code changes do not reinstall torch.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY gem_engine ./gem_engine
COPY backend ./backend
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 labeler \
    && mkdir -p /models /data \
    && chown labeler /models /data
USER labeler

EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=2)" || exit 1
ENTRYPOINT ["gem-labeler"]
CMD ["serve"]

# The web app (`search serve`) on CPU: the page, the JSON API, photos by point id.
# Built by deploy/app.yaml (context: the repository root):
#   docker compose -f deploy/app.yaml up -d --build
FROM python:3.12.8-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    FASHION_RETRIEVAL_CACHE=/tmp/fashion-retrieval
# CPU builds of torch/torchvision (a fraction of the CUDA wheels' size), pinned together
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.9.1 torchvision==0.24.1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY embedder ./embedder
COPY ingest ./ingest
COPY search ./search
RUN pip install . && useradd --create-home --uid 10001 app
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=4 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
ENTRYPOINT ["search", "serve", "--host", "0.0.0.0", "--port", "8000"]

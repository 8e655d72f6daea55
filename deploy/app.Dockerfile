# syntax=docker/dockerfile:1.7
# The web app (`search serve`) on CPU: the page, the JSON API, photos by point id. The model runs
# on OpenVINO, exported at build time from the weights (no torch import when the app serves).
# Built by deploy/app.yaml (context: the repository root; the weights folder as the extra build
# context "weights"):
#   docker compose -f deploy/app.yaml up -d --build
# or by hand:
#   docker build -f deploy/app.Dockerfile --build-context weights=$WEIGHTS \
#       --build-context calibration=$PHOTOS --build-arg WEIGHTS_FILE=best.safetensors \
#       --build-arg INT8=1 -t fashion-retrieval-app .
# no photos unless the build is given the context "calibration" (which replaces this stage)
FROM scratch AS calibration

FROM python:3.12.8-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    FASHION_RETRIEVAL_CACHE=/opt/fashion-retrieval/models
# CPU builds of torch/torchvision (a fraction of the CUDA wheels' size), pinned together; torch
# is needed to export the model here and to ingest, not to serve the exported model
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.9.1 torchvision==0.24.1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY embedder ./embedder
COPY ingest ./ingest
COPY search ./search
RUN pip install '.[int8]' && useradd --create-home --uid 10001 app
# the model, exported once for OpenVINO (fp32; with INT8=1 also int8, calibrated on the photos
# of the build context "calibration" and kept only if it passes its recall check); kept where
# the read-only app finds it
ARG WEIGHTS_FILE=best.safetensors
ARG INT8=""
RUN --mount=type=bind,from=weights,target=/weights \
    --mount=type=bind,from=calibration,target=/calibration \
    embedder export --weights "/weights/${WEIGHTS_FILE}" \
    && if [ -n "$INT8" ]; then \
         embedder export --weights "/weights/${WEIGHTS_FILE}" --int8 --calibration /calibration; \
       fi \
    && chmod -R a+rX "$FASHION_RETRIEVAL_CACHE"
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=4 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
ENTRYPOINT ["search", "serve", "--host", "0.0.0.0", "--port", "8000", "--runtime", "openvino"]

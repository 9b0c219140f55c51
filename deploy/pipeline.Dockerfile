# The image each pipeline task runs in on Argo Workflows or Airflow (`lab2prod pod <task>`, deploy/argo, deploy/airflow):
# the project folder with its locked environment. The service's image is the Bento's (`bentoml containerize`).
#   docker build -f deploy/pipeline.Dockerfile -t lab2prod:latest .                      # CPU tasks
#   docker build -f deploy/pipeline.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#     -t lab2prod:latest .                                                                # GPU tasks (torch's CUDA wheels)
FROM python:3.11-slim-bookworm
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# llama.cpp's server and converters are built at install (make install); git for the runs' lineage
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ make git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /project
ENV PIP_NO_CACHE_DIR=1
COPY requirements.lock pyproject.toml settings.ini Makefile ./
RUN python3.11 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 --index-url ${TORCH_INDEX}
COPY . .
RUN make install
ENV PATH=/project/.venv/bin:$PATH PLOOMBER_STATS_ENABLED=false PLOOMBER_VERSION_CHECK_DISABLED=true \
    ANONYMIZED_TELEMETRY=False BENTOML_DO_NOT_TRACK=True DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
CMD ["lab2prod", "--help"]

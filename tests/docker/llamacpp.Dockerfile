# llama.cpp's server image for the docker tier (tests/test_docker.py), tagged with its official
# name so that containers/compose.yaml's llamacpp profile runs unchanged. Not a fake: it holds
# the llama-server that scripts/test builds from the engine's pinned llama.cpp (the same binary
# the embedded engine runs), on the debootstrap stand-in of python:3.11-slim instead of
# llama.cpp's Ubuntu base. Laid out as the official image (.devops/cpu.Dockerfile, target
# server): libgomp1 installed, the server at /app/llama-server and the entry point,
# LLAMA_ARG_HOST=0.0.0.0.
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY llama-server /app/llama-server
ENV LLAMA_ARG_HOST=0.0.0.0
WORKDIR /app
ENTRYPOINT ["/app/llama-server"]

# The stand-in for vLLM's image (vllm/vllm-openai) in the docker tier (tests/test_docker.py),
# tagged with its official name so that containers/compose.yaml's vllm profile runs unchanged:
# the OpenAI-compatible fake of tests/ (written from vLLM's server, tests/fake_backend.py)
# behind vllm_launcher.py, which takes the server's arguments. Started as vLLM 0.11.0's image
# starts it (docker/Dockerfile: ENTRYPOINT python3 -m vllm.entrypoints.openai.api_server), so
# the launcher sits at that module's path. Built from a context the test lays out, on the
# debootstrap stand-in of python:3.11-slim.
FROM python:3.11-slim
ARG STARLETTE_VERSION
ARG UVICORN_VERSION
RUN python -m venv /opt/vllm \
    && /opt/vllm/bin/pip install --no-cache-dir --disable-pip-version-check \
        "starlette==${STARLETTE_VERSION}" "uvicorn==${UVICORN_VERSION}"
COPY tests/ /srv/vllm/tests/
COPY vllm_launcher.py /srv/vllm/vllm/entrypoints/openai/api_server.py
RUN touch /srv/vllm/vllm/__init__.py /srv/vllm/vllm/entrypoints/__init__.py \
        /srv/vllm/vllm/entrypoints/openai/__init__.py
ENV PYTHONUNBUFFERED=1 PYTHONPATH=/srv/vllm \
    PATH="/opt/vllm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]

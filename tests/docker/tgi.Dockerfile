# The stand-in for TGI's images in the docker tier (tests/test_docker.py, and the Docker Space's
# base in tests/test_docker_space.py), tagged with their official names so that
# containers/compose.yaml and containers/space/Dockerfile run unchanged: the TGI fake of tests/
# behind a launcher that takes TGI's arguments. Built from a context the test lays out (this
# file, tgi_launcher.py, tests/__init__.py, tests/fake_backend.py) on the debootstrap stand-in
# of python:3.11-slim.
#
# Laid out as TGI 3.3.6's image (its Dockerfile, stage "base"): Python 3.11 installed as root by
# `uv python install` under /root/.local/share/uv/python, a venv on it at /usr/src/.venv
# (VIRTUAL_ENV, and on PATH), the launcher at /usr/local/bin/text-generation-launcher (the
# entry point: Dockerfile_intel's ENTRYPOINT; the CUDA image's tgi-entrypoint.sh execs it).
# /root stays 0700, so, as there, only root can start it: uid 1000 cannot reach the Python
# (TGI issue #3082). Debian's python3.11 finds its standard library at its built-in prefix
# (/usr) wherever it is copied, so a copy of it stands in for uv's standalone Python.
FROM python:3.11-slim
ARG STARLETTE_VERSION
ARG UVICORN_VERSION
ARG PYTHON_HOME=/root/.local/share/uv/python/cpython-3.11-linux-x86_64-gnu
RUN mkdir -p "$PYTHON_HOME/bin" \
    && cp /usr/bin/python3.11 "$PYTHON_HOME/bin/python3.11" \
    && "$PYTHON_HOME/bin/python3.11" -m venv /usr/src/.venv \
    && /usr/src/.venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        "starlette==${STARLETTE_VERSION}" "uvicorn==${UVICORN_VERSION}"
COPY tgi_launcher.py /srv/tgi/
COPY tests/ /srv/tgi/tests/
RUN printf '#!/bin/sh\nexec /usr/src/.venv/bin/python /srv/tgi/tgi_launcher.py "$@"\n' \
        >/usr/local/bin/text-generation-launcher \
    && chmod 755 /usr/local/bin/text-generation-launcher \
    && chmod -R a+rX /srv/tgi
# The base names no PATH (docker import), so $PATH would be empty here: Docker's default, spelt out.
ENV VIRTUAL_ENV=/usr/src/.venv/ \
    PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/src/.venv/bin/" \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["text-generation-launcher"]

# The stand-in for TGI's images in the docker tier (tests/test_docker.py), tagged with their
# official names so that containers/compose.yaml runs unchanged: the TGI fake of tests/ behind
# a launcher that takes TGI's arguments. Built from a context the test lays out
# (this file, tgi_launcher.py, tests/__init__.py, tests/fake_backend.py) on the debootstrap
# stand-in of python:3.11-slim.
FROM python:3.11-slim
ARG STARLETTE_VERSION
ARG UVICORN_VERSION
RUN python -m venv /opt/tgi \
    && /opt/tgi/bin/pip install --no-cache-dir --disable-pip-version-check \
        "starlette==${STARLETTE_VERSION}" "uvicorn==${UVICORN_VERSION}"
COPY tgi_launcher.py /srv/tgi/
COPY tests/ /srv/tgi/tests/
ENV PYTHONUNBUFFERED=1 PYTHONPATH=/srv/tgi
ENTRYPOINT ["/opt/tgi/bin/python", "/srv/tgi/tgi_launcher.py"]

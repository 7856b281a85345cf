# The stand-in for the official postgres:17 image in the kubernetes tier's podman run
# (tests/test_kubernetes_podman.py): no image registry is reachable here, so it is Debian
# bookworm's own PostgreSQL (15: bookworm's; the official image's 17 comes from
# apt.postgresql.org) on the debootstrap stand-in of python:3.11-slim, tagged postgres:17 so
# that deploy/kubernetes/base/postgres.yaml runs unchanged. Laid out as the official image's
# Dockerfile (docker-library/postgres, 17/bookworm/Dockerfile, commit 6edb0a8c4def): the
# postgres user and group are 999 (created before the package, which would pick its own); no
# cluster is made when the package installs (createcluster.conf's create_main_cluster =
# false); listen_addresses = '*' in postgresql.conf.sample; /var/run/postgresql 3777 owned by
# postgres; PGDATA=/var/lib/postgresql/data; the server's binaries on PATH; the entry point
# (tests/docker/postgres_entrypoint.sh) initialises PGDATA on the first start; STOPSIGNAL
# SIGINT; CMD postgres.
FROM python:3.11-slim
ENV PG_MAJOR=15 \
    PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin" \
    LANG=C.UTF-8
RUN groupadd -r postgres --gid=999 \
    && useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres \
    && mkdir -p /var/lib/postgresql /etc/postgresql-common \
    && chown postgres:postgres /var/lib/postgresql \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "postgresql-$PG_MAJOR" >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" \
        "/usr/share/postgresql/$PG_MAJOR/postgresql.conf.sample" \
    && grep -F "listen_addresses = '*'" "/usr/share/postgresql/$PG_MAJOR/postgresql.conf.sample" \
    && install --directory --owner postgres --group postgres --mode 3777 /var/run/postgresql \
    && mkdir /docker-entrypoint-initdb.d
COPY postgres_entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
RUN install --directory --owner postgres --group postgres --mode 1777 "$PGDATA"
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]

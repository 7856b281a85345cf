#!/usr/bin/env bash
# Stands in for the official postgres image's entry point in the kubernetes tier
# (tests/docker/postgres.Dockerfile), written from its source: docker-library/postgres,
# 17/bookworm/docker-entrypoint.sh (commit 6edb0a8c4def). What it reproduces, as there:
# - a first argument that starts with "-" means `postgres ARGS` (_main);
# - POSTGRES_USER (default postgres), POSTGRES_DB (default the user), POSTGRES_PASSWORD
#   (docker_setup_env; the *_FILE variants are left out);
# - PGDATA made and chmod 700, /var/run/postgresql 3775 (docker_create_db_directories);
#   as root, both given to postgres and the script run again as postgres (the official one
#   uses gosu; here runuser, Debian's own);
# - only when PGDATA has no PG_VERSION: a password is required unless
#   POSTGRES_HOST_AUTH_METHOD=trust (docker_verify_minimum_env); initdb --username=USER
#   --pwfile (docker_init_database_dir); `host all all all <password_encryption>` appended to
#   pg_hba.conf (pg_setup_hba_conf); a socket-only server (listen_addresses='', port PGPORT or
#   5432) creates POSTGRES_DB unless it exists, runs /docker-entrypoint-initdb.d/*.sql and
#   *.sh, and stops (docker_temp_server_start, docker_setup_db, docker_process_init_files,
#   docker_temp_server_stop);
# - then `exec "$@"`: the server, with the arguments given (e.g. -c max_connections=N).
set -Eeo pipefail

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

want_help() {
    local arg
    for arg; do
        case "$arg" in -'?' | --help | --describe-config | -V | --version) return 0 ;; esac
    done
    return 1
}

sql() {
    local runner=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    PGHOST= PGHOSTADDR= "${runner[@]}" "$@"
}

if [ "$1" = 'postgres' ] && ! want_help "$@"; then
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    : "${POSTGRES_HOST_AUTH_METHOD:=}"
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA" || :
    mkdir -p /var/run/postgresql || :
    chmod 03775 /var/run/postgresql || :
    if [ "$(id -u)" = '0' ]; then
        find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
        exec runuser -u postgres -- "$BASH_SOURCE" "$@"
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        if [ -z "$POSTGRES_PASSWORD" ] && [ 'trust' != "$POSTGRES_HOST_AUTH_METHOD" ]; then
            echo >&2 'Error: Database is uninitialized and superuser password is not specified.'
            exit 1
        fi
        initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
            $POSTGRES_INITDB_ARGS
        server=("${@:2}")
        auth="$(postgres -C password_encryption "${server[@]}")"
        : "${POSTGRES_HOST_AUTH_METHOD:=$auth}"
        printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
        export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
        NOTIFY_SOCKET= PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" \
            -o "$(printf '%q ' "${server[@]}" -c listen_addresses='' -p "${PGPORT:-5432}")" \
            -w start
        exists="$(POSTGRES_DB= sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only \
            <<<"SELECT 1 FROM pg_database WHERE datname = :'db' ;")"
        if [ -z "$exists" ]; then
            POSTGRES_DB= sql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db" ;'
        fi
        for f in /docker-entrypoint-initdb.d/*; do
            case "$f" in
                *.sh) echo "$0: running $f"; . "$f" ;;
                *.sql) echo "$0: running $f"; sql --dbname "$POSTGRES_DB" -f "$f" ;;
            esac
        done
        PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
        unset PGPASSWORD
        echo 'PostgreSQL init process complete; ready for start up.'
    else
        echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
    fi
fi

exec "$@"

# shellcheck shell=bash
# Shared by the Docker scripts (sourced, not run): checks for the tools and the compose call.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_FILE="$REPO/containers/compose.yaml"
ENV_FILE="$REPO/containers/service.env"
PROFILES=(cpu cuda vllm llamacpp llamacpp-cuda)

fail() {
    echo "error: $*" >&2
    exit 1
}

require_docker() {
    command -v docker >/dev/null 2>&1 ||
        fail "docker is not installed. Install Docker Engine: https://docs.docker.com/engine/install/"
    docker info >/dev/null 2>&1 ||
        fail "the Docker engine is not running or not reachable (docker info failed). Start it, or add your user to the docker group."
}

require_compose() {
    require_docker
    docker compose version >/dev/null 2>&1 ||
        fail "Docker Compose v2 is missing (docker compose). Install the docker-compose-plugin package."
}

# check_profile NAME: exit with a clear message unless NAME is a known profile.
check_profile() {
    local profile
    for profile in "${PROFILES[@]}"; do
        [ "$1" = "$profile" ] && return 0
    done
    fail "unknown profile '$1': use one of ${PROFILES[*]}"
}

# load_env: export service.env's defaults for the variables the shell has not set.
load_env() {
    local line name
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in '' | '#'*) continue ;; esac
        name="${line%%=*}"
        [ -n "${!name+set}" ] || export "${line?}"
    done <"$ENV_FILE"
}

# host_path PATH: a folder named in service.env (relative to containers/, as Compose reads it).
host_path() {
    case "$1" in
        /*) echo "$1" ;;
        *) echo "$REPO/containers/$1" ;;
    esac
}

# prepare_cache: create the cache and data folders; the downloader and the app write them as
# the user running this.
prepare_cache() {
    HOST_UID="$(id -u)"
    HOST_GID="$(id -g)"
    export HOST_UID HOST_GID
    mkdir -p "$(host_path "$MODEL_CACHE")" "$(host_path "$APP_DATA")"
}

# The compose options that name every profile (to see or stop whatever runs).
EVERY_PROFILE=()
for profile in "${PROFILES[@]}"; do
    EVERY_PROFILE+=(--profile "$profile")
done
unset profile

# server_of PROFILE: the Compose service of the profile's inference server.
server_of() {
    case "$1" in
        cpu | cuda) echo "tgi-$1" ;;
        *) echo "$1" ;;
    esac
}

# compose ARGS...: docker compose on the project's file (and COMPOSE_OVERRIDE, a file of
# your own laid over it, when set), with every profile known to it.
compose() {
    local files=(-f "$COMPOSE_FILE")
    [ -z "${COMPOSE_OVERRIDE:-}" ] || files+=(-f "$COMPOSE_OVERRIDE")
    docker compose --project-directory "$REPO/containers" "${files[@]}" --env-file "$ENV_FILE" "$@"
}

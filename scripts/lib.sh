# shellcheck shell=bash
# Shared by scripts/run and scripts/test (sourced, not run): the project's virtualenv.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"

fail() {
    echo "error: $*" >&2
    exit 1
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    fail "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)."
}

# ensure_venv EXTRAS: create .venv and install the project with EXTRAS (e.g. "engine,test"),
# again only when pyproject.toml changed since the last install.
ensure_venv() {
    local extras="$1" stamp want
    if [ ! -x "$VENV/bin/python" ]; then
        echo "Creating the virtualenv in $VENV ..."
        "$(find_python)" -m venv "$VENV" || fail "could not create $VENV (is python3-venv installed?)"
    fi
    stamp="$VENV/.installed-${extras//,/-}"
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "Installing the playground with [$extras] into $VENV ..."
        echo "(the first install builds llama-cpp-python: about 8 minutes on 2 cores; pip caches it)"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install --disable-pip-version-check -e "${REPO}[${extras}]" \
            || fail "installing the project failed; see pip's message above."
        echo "$want" >"$stamp"
    fi
}

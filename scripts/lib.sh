# shellcheck shell=bash
# Shared by scripts/run, scripts/test and scripts/lock (sourced, not run): the virtualenvs and
# the requirements files they are installed from.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# scripts/test's: the app, the engine, the test tools and the benchmarks (bench/).
# shellcheck disable=SC2034 # (for the scripts that source this file)
VENV="$REPO/.venv"
# scripts/run's: the app and the engine only, as the images have the app only.
# shellcheck disable=SC2034
RUN_VENV="$REPO/.venv-run"
# pyproject.toml's extras; each is locked in requirements-EXTRA.txt (written by scripts/lock),
# the app's own dependencies in requirements.txt.
EXTRAS=(engine test bench)
LOCK_FILES=("$REPO/requirements.txt")
for _extra in "${EXTRAS[@]}"; do LOCK_FILES+=("$REPO/requirements-$_extra.txt"); done
unset _extra

fail() {
    echo "error: $*" >&2
    exit 1
}

# ensure_mermaid PYTHON: the Mermaid library the previews draw with, in app/static/vendor/
# (git-ignored): fetched once from the npm registry (or NPM_CONFIG_REGISTRY, a mirror of it) and
# checked against the integrity pinned in app/downloader/npm.py; a good copy in place is kept.
ensure_mermaid() {
    "$1" -m app.downloader mermaid ||
        fail "could not fetch the Mermaid library the previews use (see the line above)."
}

# locked_names FILE: the names of the packages that a requirements file pins, one a line.
locked_names() {
    sed -nE 's/^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^]]*\])?==.*/\1/p' "$1"
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

# ensure_venv DIR EXTRAS [KEEP]: a virtualenv in DIR with the app's dependencies and those of
# EXTRAS (comma-separated, may be empty), from the requirements files with every hash checked,
# and the project itself (editable, so once is enough). Installs again only when those files
# changed, then removes what no requirements file of the app, EXTRAS or KEEP (more extras that
# may stay installed) names: the virtualenv holds what the lock says and nothing else.
ensure_venv() {
    local dir="$1" extras="$2" keep="${3:-$2}" python="$1/bin/python" stamp want extra
    local files=("$REPO/requirements.txt") kept=("$REPO/requirements.txt")
    for extra in ${extras//,/ }; do files+=("$REPO/requirements-$extra.txt"); done
    for extra in ${keep//,/ }; do kept+=("$REPO/requirements-$extra.txt"); done
    if [ ! -x "$python" ]; then
        echo "Creating the virtualenv in $dir ..."
        "$(find_python)" -m venv "$dir" || fail "could not create $dir (is python3-venv installed?)"
    fi
    stamp="$dir/.installed-${extras//,/-}"
    want="$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)"
    [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || return 0
    echo "Installing the playground${extras:+ with [$extras]} into $dir ..."
    case ",$extras," in
        *,engine,*) echo "(without a cached build, llama-cpp-python compiles: about 8 minutes on 2 cores)" ;;
    esac
    # 23.1 is the first pip that takes a wheel it built from its cache when hashes are required.
    "$python" -m pip install --quiet --disable-pip-version-check "pip>=23.1" ||
        fail "could not update pip in $dir"
    local requirements=()
    for extra in "${files[@]}"; do requirements+=(-r "$extra"); done
    "$python" -m pip install --quiet --disable-pip-version-check --require-hashes "${requirements[@]}" ||
        fail "installing the locked requirements failed; see pip's message above."
    "$python" -m pip show --quiet coding-playground >/dev/null 2>&1 ||
        "$python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$REPO" ||
        fail "installing the project failed; see pip's message above."
    "$python" - "${kept[@]}" <<'PY' || fail "could not remove the packages the lock no longer names"
import re
import subprocess
import sys
from importlib import metadata


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


locked = {"pip", "setuptools", "wheel", "coding-playground"}
for path in sys.argv[1:]:
    with open(path) as lines:
        locked |= {canonical(m[1]) for m in map(re.compile(r"([\w.-]+)(\[.*\])?==").match, lines) if m}
stale = sorted({canonical(d.metadata["Name"]) for d in metadata.distributions()} - locked)
if stale:
    print(f"Removing what the requirements files do not name: {', '.join(stale)}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *stale], check=True)
PY
    echo "$want" >"$stamp"
}

# The linter of the page's scripts (app/ui/*.js): ESLint, pinned with the integrity hash of
# every package in tools/jslint/package-lock.json.
JSLINT="$REPO/tools/jslint"

# ensure_jslint: tools/jslint/node_modules (git-ignored) installed from that lock with npm ci
# (from the npm registry, or NPM_CONFIG_REGISTRY), again only when package.json or the lock
# changed. No package's install script runs.
ensure_jslint() {
    local stamp="$JSLINT/node_modules/.installed" want
    want="$(cat "$JSLINT/package.json" "$JSLINT/package-lock.json" | sha256sum | cut -d' ' -f1)"
    [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || return 0
    echo "Installing the JavaScript linter into $JSLINT/node_modules ..."
    (cd "$JSLINT" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null) ||
        fail "npm ci could not install the JavaScript linter; see npm's message above."
    echo "$want" >"$stamp"
}

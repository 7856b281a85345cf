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

# The embedded engine, llama-cpp-python, ships as source only: it is compiled here, once, and
# its wheel kept in ENGINE_CACHE, in a folder named by its pin and its build options.
ENGINE_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/coding-playground/engine"

# engine_cmake_args: llama.cpp's build options (CMAKE_ARGS). For this CPU (GGML_NATIVE=ON,
# llama.cpp's default, spelled out: SOURCE_DATE_EPOCH turns it off), without Intel AMX on
# x86-64: built by GCC 12, ggml's AMX kernels (ggml-cpu/amx/mmq.cpp) die with a general
# protection fault in ldtilecfg on the first prompt of more than one token, as GCC's
# _tile_loadconfig tells the compiler it reads 8 of the config's 64 bytes and the tile sizes
# written before it are dropped. ggml's GGML_AMX_* options count only with GGML_NATIVE off,
# hence the compiler's flags; a compiler that knows no AMX builds none and is given none. The
# caller's CMAKE_ARGS (a GPU backend, say) come last.
engine_cmake_args() {
    local args="-DGGML_NATIVE=ON" no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    # shellcheck disable=SC2086 # (three flags)
    if [ "$(uname -m)" = x86_64 ] && "${CC:-cc}" $no_amx -E -x c /dev/null >/dev/null 2>&1; then
        args+=" '-DCMAKE_C_FLAGS=$no_amx' '-DCMAKE_CXX_FLAGS=$no_amx'"
    fi
    echo "$args${CMAKE_ARGS:+ $CMAKE_ARGS}"
}

# ensure_engine_wheel PYTHON: sets ENGINE_WHEEL to the engine's wheel, built with
# engine_cmake_args from the sdist that requirements-engine.txt pins (its hash checked) the
# first time, found in ENGINE_CACHE after that. pip's own wheel cache is left out of it: it
# keys a wheel by the sdist alone, and would hand back one built with other options.
ensure_engine_wheel() {
    local python="$1" pin args version dir tmp
    # The pin and its hash lines, as the lock writes them.
    pin="$(awk '/^llama-cpp-python[[=]/ { on = 1 } on { print; if (!/\\$/) exit }' \
        "$REPO/requirements-engine.txt")"
    [ -n "$pin" ] || fail "requirements-engine.txt pins no llama-cpp-python"
    args="$(engine_cmake_args)"
    version="$(sed -nE '1s/.*==([^ ]+).*/\1/p' <<<"$pin")"
    dir="$ENGINE_CACHE/llama-cpp-python-$version-$(uname -m)-$(
        printf '%s\n%s\n' "$pin" "$args" | sha256sum | cut -c1-16)"
    ENGINE_WHEEL="$(compgen -G "$dir/*.whl" | head -n1 || true)"
    [ -z "$ENGINE_WHEEL" ] || return 0
    echo "Building llama-cpp-python $version (about 5 minutes on 2 cores, once: kept in $dir)"
    echo "  with CMAKE_ARGS=$args"
    mkdir -p "$ENGINE_CACHE"
    tmp="$(mktemp -d "$dir.XXXXXX")"
    echo "$pin" >"$tmp/requirements.txt"
    echo "$args" >"$tmp/cmake-args"
    if ! CMAKE_ARGS="$args" "$python" -m pip wheel --quiet --disable-pip-version-check \
        --no-deps --no-cache-dir --require-hashes -r "$tmp/requirements.txt" -w "$tmp"; then
        rm -rf "$tmp"
        fail "building llama-cpp-python failed (it needs a C/C++ compiler); see pip's message."
    fi
    # Whole or not at all, and a build that finished first in another shell wins.
    mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
    ENGINE_WHEEL="$(compgen -G "$dir/*.whl" | head -n1)"
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
    local engine=false
    case ",$extras," in *,engine,*) engine=true ;; esac
    stamp="$dir/.installed-${extras//,/-}"
    # The engine's build options count too: a virtualenv whose engine was built otherwise (with
    # AMX, before) gets the engine they make.
    want="$({ cat "${files[@]}"; if $engine; then engine_cmake_args; fi; } | sha256sum)"
    want="${want%% *}"
    [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || return 0
    echo "Installing the playground${extras:+ with [$extras]} into $dir ..."
    # 23.1 is the first pip that takes a wheel it built from its cache when hashes are required.
    "$python" -m pip install --quiet --disable-pip-version-check "pip>=23.1" ||
        fail "could not update pip in $dir"
    if $engine; then
        # The engine first, from its own wheel; the locked install below finds that version in
        # place and adds what it needs, every hash checked.
        ensure_engine_wheel "$python"
        "$python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
            "$ENGINE_WHEEL" || fail "installing the engine's wheel failed; see pip's message above."
    fi
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

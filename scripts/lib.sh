# shellcheck shell=bash
# Shared by scripts/run, scripts/test and scripts/lock (sourced, not run): the virtualenvs and
# the requirements files they are installed from.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# scripts/test's: the app, the test tools, the benchmarks (bench/) and their baseline engine.
# shellcheck disable=SC2034 # (for the scripts that source this file)
VENV="$REPO/.venv"
# scripts/run's: the app only, as the images have the app only (the engine, llama-server, is a
# binary of its own: ensure_engine_server).
# shellcheck disable=SC2034
RUN_VENV="$REPO/.venv-run"
# pyproject.toml's extras; each is locked in requirements-EXTRA.txt (written by scripts/lock),
# the app's own dependencies in requirements.txt.
EXTRAS=(baseline test bench)
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

# The engines are built here, once, and kept in ENGINE_CACHE, each in a folder named by its pin
# and its build options.
ENGINE_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/coding-playground/engine"
# The embedded engine is llama.cpp's own server, llama-server, built from the llama.cpp that the
# llama-cpp-python sdist vendors (vendor/llama.cpp, commit 0c1e570): fetched from PyPI as
# source only, never installed, its hash checked. The same source as the llama-cpp-python of
# the benchmarks' baseline (requirements-baseline.txt).
ENGINE_SOURCE="llama-cpp-python==0.3.36 --hash=sha256:832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

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

# engine_server_cmake_args: llama-server's build, with engine_cmake_args: one binary with
# llama.cpp's own libraries linked in (it is copied out of its build folder; the C++ runtime
# and OpenMP stay shared), no tests, examples nor web UI (LLAMA_USE_PREBUILT_UI
# would fetch the UI from the Hub at build time, and the app is the UI), no OpenSSL (it
# serves the app on this machine over plain HTTP).
engine_server_cmake_args() {
    echo "-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF" \
        "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF" \
        "-DLLAMA_OPENSSL=OFF $(engine_cmake_args)"
}

# engine_folder NAME PIN ARGS: the cache folder of a build of PIN with ARGS.
engine_folder() {
    local version
    version="$(sed -nE '1s/[^=]*==([^ ]+).*/\1/p' <<<"$2")"
    echo "$ENGINE_CACHE/$1-$version-$(uname -m)-$(printf '%s\n%s\n' "$2" "$3" | sha256sum | cut -c1-16)"
}

# ensure_engine_server PYTHON: sets and exports ENGINE_SERVER, the llama-server binary (the
# app's ENGINE_SERVER setting): found in ENGINE_CACHE, or built there the first time from
# ENGINE_SOURCE (pip download, PYTHON's pip), with engine_server_cmake_args.
ensure_engine_server() {
    local python="$1" args dir tmp src
    args="$(engine_server_cmake_args)"
    dir="$(engine_folder llama-server "$ENGINE_SOURCE" "$args")"
    export ENGINE_SERVER="$dir/llama-server"
    [ ! -x "$ENGINE_SERVER" ] || return 0
    echo "Building llama-server (about 5 minutes on 2 cores, once: kept in $dir)"
    echo "  with $args"
    mkdir -p "$ENGINE_CACHE"
    tmp="$(mktemp -d "$dir.XXXXXX")"
    echo "$ENGINE_SOURCE" >"$tmp/requirements.txt"
    echo "$args" >"$tmp/cmake-args"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        --require-hashes -r "$tmp/requirements.txt" -d "$tmp" ||
        { rm -rf "$tmp"; fail "could not fetch llama.cpp's source from PyPI; see pip's message."; }
    if ! tar -xzf "$tmp"/*.tar.gz -C "$tmp"; then
        rm -rf "$tmp"
        fail "could not unpack llama.cpp's source; see tar's message."
    fi
    rm "$tmp"/*.tar.gz
    src="$(compgen -G "$tmp/*/vendor/llama.cpp")"
    # shellcheck disable=SC2086 # (the options, quoted as engine_cmake_args quotes them)
    if ! { eval cmake -S "'$src'" -B "'$tmp/build'" $args >"$tmp/build.log" 2>&1 &&
        cmake --build "$tmp/build" --target llama-server -j "$(nproc)" >>"$tmp/build.log" 2>&1; }; then
        tail -n 20 "$tmp/build.log" >&2
        rm -rf "$tmp"
        fail "building llama-server failed (it needs CMake and a C/C++ compiler); see above."
    fi
    cp "$tmp/build/bin/llama-server" "$tmp/llama-server"
    rm -rf "$tmp/build" "${src%/vendor/llama.cpp}"
    # Whole or not at all, and a build that finished first in another shell wins.
    mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
}

# ensure_baseline_wheel PYTHON: sets BASELINE_WHEEL to the wheel of llama-cpp-python (the
# embedded engine before llama-server, the engine benchmark's baseline: bench/engines.py),
# built with engine_cmake_args from the sdist that requirements-baseline.txt pins (its hash
# checked) the first time, found in ENGINE_CACHE after that. pip's own wheel cache is left out
# of it: it keys a wheel by the sdist alone, and would hand back one built with other options.
ensure_baseline_wheel() {
    local python="$1" pin args dir tmp
    # The pin and its hash lines, as the lock writes them.
    pin="$(awk '/^llama-cpp-python[[=]/ { on = 1 } on { print; if (!/\\$/) exit }' \
        "$REPO/requirements-baseline.txt")"
    [ -n "$pin" ] || fail "requirements-baseline.txt pins no llama-cpp-python"
    args="$(engine_cmake_args)"
    dir="$(engine_folder llama-cpp-python "$pin" "$args")"
    BASELINE_WHEEL="$(compgen -G "$dir/*.whl" | head -n1 || true)"
    [ -z "$BASELINE_WHEEL" ] || return 0
    echo "Building llama-cpp-python, the benchmarks' baseline engine (about 5 minutes on 2 cores, once: kept in $dir)"
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
    BASELINE_WHEEL="$(compgen -G "$dir/*.whl" | head -n1)"
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
    local baseline=false
    case ",$extras," in *,baseline,*) baseline=true ;; esac
    stamp="$dir/.installed-${extras//,/-}"
    # The baseline engine's build options count too: a virtualenv whose engine was built
    # otherwise (with AMX, before) gets the engine they make.
    want="$({ cat "${files[@]}"; if $baseline; then engine_cmake_args; fi; } | sha256sum)"
    want="${want%% *}"
    [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || return 0
    echo "Installing the playground${extras:+ with [$extras]} into $dir ..."
    # 23.1 is the first pip that takes a wheel it built from its cache when hashes are required.
    "$python" -m pip install --quiet --disable-pip-version-check "pip>=23.1" ||
        fail "could not update pip in $dir"
    if $baseline; then
        # The baseline engine first, from its own wheel; the locked install below finds that
        # version in place and adds what it needs, every hash checked.
        ensure_baseline_wheel "$python"
        "$python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
            "$BASELINE_WHEEL" || fail "installing the baseline engine's wheel failed; see pip's message above."
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

# Shared by scripts/test and bench/run (sourced, not run): quiet idempotent installs
# of Debian and PyPI packages, and a dockerd started when none answers.
# The caller sets LOGDIR (where the logs of noisy commands go) and START=$SECONDS.

step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - ${START:-0}))" "$*"; }
die() { printf '%s: %s\n' "${PROG:-${0##*/}}" "$*" >&2; exit 1; }

# Run a noisy command with its output in $LOGDIR/NAME.log; show the log only on failure.
quietly() {
  local log="$LOGDIR/$1.log"
  shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    die "failed: $* (full log: $log)"
  fi
}

# ensure_installed "DEBIAN PKGS..." "PY MODULES (comma-separated import list)" "PIP SPECS..."
# Installs only what is missing; prints nothing when everything is there.
ensure_installed() {
  local -a apt_pkgs=($1) py_packages=($3)
  local py_modules=$2 pkg
  local -a apt_missing=()
  for pkg in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || apt_missing+=("$pkg")
  done
  local need_pip=false
  if [[ -n $py_modules ]] && ! python3 -c "import $py_modules" 2>/dev/null; then
    need_pip=true
    python3 -m pip --version >/dev/null 2>&1 || apt_missing+=(python3-pip)
  fi
  if ((${#apt_missing[@]})); then
    step "installing Debian packages: ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quietly apt-update apt-get update -q
    quietly apt-install apt-get install -y -q "${apt_missing[@]}"
  fi
  if $need_pip; then
    step "installing PyPI packages: ${py_packages[*]}"
    # Debian's own python3 is "externally managed"; this machine's test deps live there anyway.
    quietly pip-install env PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet \
      --disable-pip-version-check --root-user-action=ignore "${py_packages[@]}"
    python3 -c "import $py_modules" || die "python modules still missing after pip install"
  fi
}

# Starts dockerd (no bridge, no iptables) unless a daemon answers; sets DOCKERD_PID
# when it started one (stop it with stop_dockerd, e.g. from an EXIT trap) and exports
# DOCKER, the client to use.
DOCKERD_PID=""
ensure_dockerd() {
  # Debian's client always speaks to Debian's dockerd (20.10); a newer client on PATH may not.
  if ! docker info >/dev/null 2>&1 && ! /usr/bin/docker info >/dev/null 2>&1; then
    step "starting dockerd (log: $LOGDIR/dockerd.log)"
    dockerd --bridge=none --iptables=false >"$LOGDIR/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
      /usr/bin/docker info >/dev/null 2>&1 && break
      kill -0 "$DOCKERD_PID" 2>/dev/null || break
      sleep 1
    done
    /usr/bin/docker info >/dev/null 2>&1 || { tail -n 40 "$LOGDIR/dockerd.log" >&2; die "dockerd did not come up"; }
  fi
  if docker info >/dev/null 2>&1; then
    DOCKER=$(command -v docker)
  else
    DOCKER=/usr/bin/docker
  fi
  export DOCKER
}

stop_dockerd() {
  [[ -n $DOCKERD_PID ]] || return 0
  kill -TERM "$DOCKERD_PID" 2>/dev/null || return 0
  for _ in $(seq 30); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  kill -KILL "$DOCKERD_PID" 2>/dev/null || true
  wait "$DOCKERD_PID" 2>/dev/null || true
}

# start_private_dockerd DIR: a dockerd of its own, with its socket, data and exec
# roots under DIR (and its own containerd namespace), no bridge, no iptables; so a
# benchmark neither shares a daemon that someone else may stop nor disturbs it.
# Exports DOCKER_HOST and DOCKER (Debian's client); stop it with stop_dockerd.
start_private_dockerd() {
  local dir=$1
  mkdir -p "$dir"
  step "starting a private dockerd under $dir (log: $LOGDIR/dockerd.log)"
  dockerd --bridge=none --iptables=false --host "unix://$dir/docker.sock" --data-root "$dir/data" \
    --exec-root "$dir/exec" --pidfile "$dir/docker.pid" --containerd-namespace wharf-bench \
    --containerd-plugins-namespace wharf-bench-plugins >"$LOGDIR/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  export DOCKER_HOST="unix://$dir/docker.sock"
  for _ in $(seq 60); do
    /usr/bin/docker info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  /usr/bin/docker info >/dev/null 2>&1 || { tail -n 40 "$LOGDIR/dockerd.log" >&2; die "private dockerd did not come up"; }
  DOCKER=/usr/bin/docker
  export DOCKER
}

# start_postgres DIR: a throwaway PostgreSQL cluster (Debian's `postgresql` package)
# in DIR/data, run as the postgres user on 127.0.0.1 with a free port, trust auth and
# fsync off (the data dies with the test). Its own port, so a cluster the Debian
# package may have started on 5432 does not matter. Sets POSTGRES_DIR and exports
# WHARF_TEST_POSTGRES_URL (postgres://postgres@127.0.0.1:PORT/postgres); stop it
# with stop_postgres (e.g. from an EXIT trap).
POSTGRES_DIR=""
start_postgres() {
  local dir=$1 bin port
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -x $bin/initdb && -x $bin/pg_ctl ]] || die "no PostgreSQL server (install the Debian package postgresql)"
  id postgres >/dev/null 2>&1 || die "no postgres user (install the Debian package postgresql)"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$dir"
  chown postgres: "$dir"
  POSTGRES_DIR=$dir
  step "starting PostgreSQL ($bin) on 127.0.0.1:$port in $dir"
  quietly initdb runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
    --locale=C.UTF-8 --no-sync
  quietly pg_ctl-start runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
    start
  export WHARF_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# stop_postgres: stops the cluster of start_postgres and removes its directory.
stop_postgres() {
  [[ -n $POSTGRES_DIR ]] || return 0
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  runuser -u postgres -- "$bin/pg_ctl" -D "$POSTGRES_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$POSTGRES_DIR"
  POSTGRES_DIR=""
  unset WHARF_TEST_POSTGRES_URL
}

# Starts an S3-compatible server (moto_server, from PyPI moto[server]) on a free
# loopback port for the tests; sets MOTO_PID and exports WHARF_TEST_S3_ENDPOINT.
# Stop it with stop_moto (e.g. from an EXIT trap). Its log: $LOGDIR/moto.log.
MOTO_PID=""
start_moto() {
  command -v moto_server >/dev/null || die "moto_server not found (PyPI moto[server])"
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  moto_server -H 127.0.0.1 -p "$port" >"$LOGDIR/moto.log" 2>&1 &
  MOTO_PID=$!
  for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null && break
    kill -0 "$MOTO_PID" 2>/dev/null || break
    sleep 0.2
  done
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null ||
    { tail -n 40 "$LOGDIR/moto.log" >&2; die "moto_server did not come up"; }
  export WHARF_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
}

stop_moto() {
  [[ -n $MOTO_PID ]] || return 0
  kill -TERM "$MOTO_PID" 2>/dev/null || true
  wait "$MOTO_PID" 2>/dev/null || true
  MOTO_PID=""
}

# Installs Azurite (Microsoft's Azure Storage emulator, from npm, run by
# tests/e2e/test_azure.py) under $WHARF_TOOLS_DIR (default
# /opt/wharf-test-tools) unless it is there; exports WHARF_AZURITE_BIN.
ensure_azurite() {
  local dir=${WHARF_TOOLS_DIR:-/opt/wharf-test-tools}/azurite
  if [[ ! -x $dir/node_modules/.bin/azurite-blob ]]; then
    command -v npm >/dev/null || ensure_installed "nodejs npm" "" ""
    step "installing Azurite (npm) into $dir"
    mkdir -p "$dir"
    quietly npm-azurite npm install --prefix "$dir" --no-audit --no-fund --loglevel=error azurite@3
  fi
  export WHARF_AZURITE_BIN=$dir/node_modules/.bin/azurite-blob
  [[ -x $WHARF_AZURITE_BIN ]] || die "azurite-blob missing after npm install"
}

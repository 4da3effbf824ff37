#!/usr/bin/env bash
# Installs on Debian (or Ubuntu) what autobuilder needs to build and run, and with --tests what its
# tests need too; starts a Docker engine when none answers; checks that Rust is recent enough.
# Skips whatever is already there, so running it again is fast. Packages need root:
#   sudo scripts/install-deps.sh           # build, run, demo
#   sudo scripts/install-deps.sh --tests   # also redis-server, postgresql, chromium, chromium-driver, axe-core (pip)
set -euo pipefail
cd "$(dirname "$0")/.."

tests=false
for arg in "$@"; do
  case "$arg" in
    --tests) tests=true ;;
    -h | --help) sed -n '2,6s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument $arg (usage: scripts/install-deps.sh [--tests])" >&2; exit 2 ;;
  esac
done

say() { echo "install-deps: $*"; }

# build-essential: the C compiler for libgit2's vendored build; busybox-static: the base image of
# the demo's and the tests' build containers (imported, no registry needed).
packages=(pkg-config libssl-dev git curl openssl ca-certificates build-essential busybox-static)
# postgresql: the tests make throwaway clusters of their own with its initdb (none is started here).
# iproute2 (ip netns) and util-linux (nsenter): the tests' extra Docker engines, one per build host.
if $tests; then packages+=(redis-server postgresql chromium chromium-driver iproute2 util-linux); fi

# --- Debian packages -------------------------------------------------------------------------
if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  say "no apt-get here: this script installs with Debian's apt. Install the equivalents of these yourself:"
  say "  ${packages[*]} and Docker"
  exit 1
fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
# Any Docker engine that answers will do (docker.io, docker-ce, a remote DOCKER_HOST).
if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then missing+=(docker.io); fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing: ${missing[*]}"
    say "run this script as root to install them: sudo $0 $*"
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Docker engine ---------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  if pgrep -x dockerd >/dev/null 2>&1 || pidof dockerd >/dev/null 2>&1; then
    say "a Docker daemon runs but does not answer you. Run autobuilder as root, or join the docker group:"
    say "  sudo usermod -aG docker \"\$USER\"   (then log in again)"
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "no Docker engine runs; start it as root: sudo $0 $*"
    exit 1
  fi
  if [ -d /run/systemd/system ]; then
    say "starting docker (systemctl)"
    systemctl start docker
  else
    # No systemd (a container, a CI runner): the daemon runs in the background. No bridge and no
    # iptables, so it also runs where those are not permitted; builds use network mode none.
    log=/var/log/autobuilder-dockerd.log
    say "starting dockerd in the background (log: $log)"
    (nohup dockerd --bridge=none --iptables=false >"$log" 2>&1 &)
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  if ! docker info >/dev/null 2>&1; then
    [ -f "${log:-}" ] && tail -n 20 "$log"
    say "the Docker engine did not start"
    exit 1
  fi
fi

# --- Rust ------------------------------------------------------------------------------------
minimum=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)
# Under sudo, root rarely has Rust: look at the invoking user's rustup installation.
if [ -n "${SUDO_USER:-}" ] && ! command -v cargo >/dev/null; then
  user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
  if [ -x "$user_home/.cargo/bin/cargo" ]; then
    export PATH="$PATH:$user_home/.cargo/bin" RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
  fi
fi
rustup_hint="install Rust with rustup (https://rustup.rs), as the user who builds:
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
  . \"\$HOME/.cargo/env\""
if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
  say "Rust (cargo, rustc) is not installed; autobuilder needs Rust $minimum or newer. To $rustup_hint"
  exit 1
fi
version=$(rustc --version | cut -d' ' -f2)
if [ "$(printf '%s\n%s\n' "$minimum" "$version" | sort -V | head -n1)" != "$minimum" ]; then
  if command -v rustup >/dev/null; then
    say "Rust $version is too old: autobuilder needs $minimum or newer. Update it: rustup update stable"
  else
    say "Rust $version ($(command -v rustc)) is too old: autobuilder needs $minimum or newer." \
      "Remove the distribution's rustc/cargo packages and $rustup_hint"
  fi
  exit 1
fi
if $tests && ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1; then
  say "cargo fmt and cargo clippy are missing (the checks use them): rustup component add rustfmt clippy"
  exit 1
fi
# --- axe-core (tests) -------------------------------------------------------------------------
# tests/accessibility.rs injects axe-core's axe.min.js into the pages; PyPI's axe-playwright-python
# ships it (axe-core 4.12.1). Only that file is used: --no-deps leaves Playwright out.
axe=axe-playwright-python axe_version=0.1.8
if $tests; then
  installed=$(python3 -c "import importlib.metadata as m; print(m.version('$axe'))" 2>/dev/null || true)
  if [ "$installed" != "$axe_version" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
      say "the accessibility test needs $axe from PyPI, and $(command -v python3 || echo python3) has no pip:"
      say "  install python3 and pip, then run this script again (or set AXE_CORE_JS to an axe.min.js)"
      exit 1
    fi
    say "installing axe-core for the accessibility test: python3 -m pip install --no-deps $axe==$axe_version"
    PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet --no-deps "$axe==$axe_version"
  fi
  packages+=("$axe $axe_version (pip)")
fi

say "all set: Rust $version, ${packages[*]}, Docker $(docker version --format '{{.Server.Version}}' 2>/dev/null)"

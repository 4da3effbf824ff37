#!/usr/bin/env bash
# A local demo on the embedded defaults: makes a recipes repository and an app repository on disk,
# starts `autobuilder serve`, sends it a signed push webhook, then pushes a new commit every 20 s
# (a passing build, a failing one, and a long coloured log) until Ctrl-C, so that
# http://127.0.0.1:5560/monitor always has something to show. Needs Docker, git, curl, openssl and
# busybox-static (for the demo's base image: no registry is needed; build containers have no network).
#   ./scripts/demo.sh           start the demo (its history in demo/ is kept from run to run)
#   ./scripts/demo.sh --reset   start afresh (DEMO_RESET=1 too)
#   ./scripts/demo.sh push      push one more commit to the running demo
# DEMO_PORT=5570 picks another port. Ctrl-C stops the server and the pushes.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/demo"
app="$root/repos/demo/hello"
image="autobuilder-demo-busybox:latest"
secret="demo-secret"
admin_token="demo-admin-token"
every=20

say() { echo "demo: $*"; }

commit() { # repo-dir message: commits everything in it (if anything changed), prints the head's sha
  git -C "$1" add -A
  git -C "$1" diff --cached --quiet ||
    git -C "$1" -c user.name=Demo -c user.email=demo@example.invalid commit -q -m "$2"
  git -C "$1" rev-parse HEAD
}

# The next commit of the app, in a cycle of three: a passing build, one that breaks the greeting
# test (build.sh fails), one that fixes it. Every push also runs docs.sh, the long coloured log.
push_next() (
  flock 9 # the push loop and `demo.sh push` take turns
  listen=$(cat "$root/listen" 2>/dev/null || true)
  if [ -z "$listen" ] || ! curl -sf "http://$listen/healthz" >/dev/null; then
    say "the demo is not running: start it with ./scripts/demo.sh" >&2
    exit 1
  fi
  n=$(($(cat "$root/pushes" 2>/dev/null || echo 0) + 1))
  case $((n % 3)) in
    1) echo "hello from autobuilder (push $n)" >"$app/greeting.txt" && message="Say hello (push $n)" ;;
    2) : >"$app/greeting.txt" && message="Empty the greeting, which breaks its test (push $n)" ;;
    0) echo "hello again from autobuilder (push $n)" >"$app/greeting.txt" && message="Bring the greeting back (push $n)" ;;
  esac
  sha=$(commit "$app" "$message")
  echo "$n" >"$root/pushes"
  payload=$(printf '{"ref":"refs/heads/master","after":"%s","repository":{"full_name":"demo/hello"},"head_commit":{"message":"%s","author":{"name":"Demo"}}}' "$sha" "$message")
  signature="sha256=$(printf '%s' "$payload" | openssl dgst -sha256 -hmac "$secret" | sed 's/^.* //')"
  answer=$(curl -s --max-time 30 -X POST "http://$listen/build/demo/hook" -H "X-GitHub-Event: push" \
    -H "X-GitHub-Delivery: demo-$sha" -H "X-Hub-Signature-256: $signature" \
    -H "Content-Type: application/json" -d "$payload")
  # The answer's "message" (e.g. "2 builds queued for ..."), or all of it when it has none.
  said=$(printf '%s' "$answer" | sed -n 's/.*"message":"\([^"]*\)".*/\1/p')
  say "pushed \"$message\" (${sha:0:10}): ${said:-$answer}"
) 9>>"$root/push.lock"

reset=${DEMO_RESET:-0}
case "${1:-}" in
  push)
    [ -f "$root/listen" ] || { say "the demo is not running: start it with ./scripts/demo.sh" >&2; exit 1; }
    push_next
    exit
    ;;
  --reset) reset=1 ;;
  "") ;;
  -h | --help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) say "unknown argument $1 (usage: ./scripts/demo.sh [--reset | push])" >&2; exit 2 ;;
esac
[ "$reset" = 0 ] || [ "$reset" = 1 ] || { say "DEMO_RESET is 0 or 1, not $reset" >&2; exit 2; }
listen="127.0.0.1:${DEMO_PORT:-5560}"

missing=()
for tool in cargo git curl openssl flock; do command -v "$tool" >/dev/null || missing+=("$tool"); done
docker info >/dev/null 2>&1 || missing+=("a Docker engine that answers you (root, or the docker group)")
docker image inspect "$image" >/dev/null 2>&1 || [ -x /bin/busybox ] || command -v busybox >/dev/null ||
  missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  say "missing: ${missing[*]}. On Debian/Ubuntu: sudo scripts/install-deps.sh" >&2
  exit 1
fi

say "building autobuilder (cargo build): the first build compiles a few hundred crates and takes"
say "several minutes; later runs take seconds"
cargo build
echo

mkdir -p "$root"
exec 8>>"$root/run.lock"
flock -n 8 || { say "a demo already runs on $root (stop it with Ctrl-C first)" >&2; exit 1; }
if [ "$reset" = 1 ]; then
  say "--reset: forgetting the history and repositories in $root"
  find "$root" -mindepth 1 -maxdepth 1 ! -name run.lock -exec rm -rf {} +
fi

if ! docker image inspect "$image" >/dev/null 2>&1; then
  say "importing $image from the host's busybox"
  busybox=$(command -v busybox || echo /bin/busybox)
  rootfs="$root/rootfs" && rm -rf "$rootfs" && mkdir -p "$rootfs/bin" "$rootfs/tmp"
  cp "$busybox" "$rootfs/bin/busybox"
  for applet in $("$busybox" --list); do [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"; done
  tar -C "$rootfs" -c . | docker import - "$image" >/dev/null
  rm -rf "$rootfs"
fi

# The recipes: demo/hello's master branch runs two build scripts per push.
mkdir -p "$root/repos/demo/recipes/demo/hello" "$app/autobuild"
[ -d "$root/repos/demo/recipes/.git" ] || git -C "$root/repos/demo/recipes" init -q -b master
cat >"$root/repos/demo/recipes/demo/hello/master.yaml" <<'YAML'
buildscripts:
  - autobuild/build.sh
  - autobuild/docs.sh
autobuild/build.sh:
  archives: /tmp/archives
  artifact: hello.tar.gz
autobuild/docs.sh:
  archives: /tmp/archives
  artifact: docs.tar.gz
  tag: docs
YAML
commit "$root/repos/demo/recipes" "Track demo/hello: a build and its docs" >/dev/null

# The app: build.sh compiles for a few seconds and fails when greeting.txt is empty; docs.sh writes
# a long coloured log (a few thousand lines, warnings, a \r progress bar).
[ -d "$app/.git" ] || { git -C "$app" init -q -b master && echo "hello from autobuilder" >"$app/greeting.txt"; }
cat >"$app/autobuild/build.sh" <<'SH'
#!/bin/sh
set -e
echo "building $AUTOBUILDER_REPOSITORY $AUTOBUILDER_BRANCH at $AUTOBUILDER_COMMIT"
for step in 1 2 3 4 5 6; do
  printf '\033[32mstep %s/6\033[0m compiling part %s\n' "$step" "$step"
  sleep 1
done
echo "testing the greeting"
if [ ! -s greeting.txt ]; then
  printf '\033[1;31merror:\033[0m greeting.txt is empty: the greeting test needs a line of text\n'
  exit 1
fi
printf '\033[32mok\033[0m the greeting is: %s\n' "$(cat greeting.txt)"
tar -czf /tmp/archives/hello.tar.gz greeting.txt
echo "done"
SH
cat >"$app/autobuild/docs.sh" <<'SH'
#!/bin/sh
set -e
printf '\033[1;34mgenerating the documentation\033[0m of %s at %s\n' "$AUTOBUILDER_REPOSITORY" "$AUTOBUILDER_COMMIT"
for i in $(seq 1 600); do
  printf '\033[1;32m   Compiling\033[0m page-%03d v0.%d.%d\n' "$i" $((i / 100)) $((i % 100))
  if [ $((i % 75)) = 0 ]; then
    printf '\033[1;33mwarning\033[0m: page-%03d links to a section that moved\n' "$i"
    printf '  \033[34m-->\033[0m docs/page-%03d.md:%d:5\n' "$i" $((i % 40 + 1))
  fi
  [ $((i % 100)) != 0 ] || sleep 0.3
done
for i in $(seq 1 2400); do
  if [ $((i % 97)) = 0 ]; then
    printf 'check example_%04d ... \033[33mignored\033[0m\n' "$i"
  else
    printf 'check example_%04d ... \033[32mok\033[0m\n' "$i"
  fi
  [ $((i % 400)) != 0 ] || sleep 0.3
done
for percent in $(seq 0 5 100); do
  bar=$(printf '%*s' $((percent / 5)) '' | tr ' ' '#')
  printf '\rpacking [%-20s] %3d%%' "$bar" "$percent"
  sleep 0.1
done
printf '\n\033[1;32m    Finished\033[0m 600 pages, 2400 examples checked\n'
mkdir -p /tmp/docs && echo "the documentation of $AUTOBUILDER_COMMIT" >/tmp/docs/index.txt
tar -czf /tmp/archives/docs.tar.gz -C /tmp/docs index.txt
SH
commit "$app" "Add the build and docs scripts" >/dev/null

cat >"$root/config.toml" <<TOML
listen = "$listen"
public_url = "http://$listen"
data_dir = "$root/data"
tmp_directory = "$root/tmp"
admin_token = "$admin_token"
[git]
clone_url = "file://$root/repos/{repo}"
[docker]
default_image = "$image"
network = "none"
[builds]
cancel_grace_seconds = 2
[artifacts]
directory = "$root/artifacts"
[projects.demo]
recipes = "demo/recipes"
webhook_secret = "$secret"
TOML
mkdir -p "$root/data"
echo "$listen" >"$root/listen"

# Stopping: the push loop first, then cancel what still builds (so no container is left running),
# then the server.
server="" loop=""
# shellcheck disable=SC2317 # run by the traps
end() { # pid seconds: SIGTERM, then SIGKILL if it is still there after that many seconds
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 $(($2 * 10))); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
}
# shellcheck disable=SC2317 # run by the traps
stop() {
  # A second Ctrl-C or SIGTERM (a supervisor signals the whole process group) must not cut the
  # stopping short and leave the server running.
  trap - EXIT
  trap '' INT TERM
  echo
  say "stopping"
  [ -z "$loop" ] || end "$loop" 10
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    for _ in $(seq 1 30); do
      ids=$(curl -sf --max-time 5 "http://$listen/build/status" | grep -o '"id":[0-9]*' | cut -d: -f2 || true)
      [ -n "$ids" ] || break
      for id in $ids; do
        curl -sf --max-time 5 -X POST -H "Authorization: Bearer $admin_token" \
          "http://$listen/build/$id/cancel" >/dev/null || true
      done
      sleep 1
    done
    end "$server" 30
  fi
  # Whatever container of this demo's instance (named after its data directory) is still there.
  instance=$(printf '%s' "$(realpath "$root/data")" | sha256sum | cut -c1-12)
  containers=$(docker ps -aq --filter "label=autobuilder.instance=$instance")
  # shellcheck disable=SC2086 # one container id per word
  [ -z "$containers" ] || docker rm -f $containers >/dev/null
  say "stopped; the history stays in $root (./scripts/demo.sh --reset starts afresh)"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Its own session: Ctrl-C reaches this script only, which stops the server in order.
setsid ./target/debug/autobuilder serve --config "$root/config.toml" >>"$root/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do
  curl -sf "http://$listen/healthz" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { tail -n 20 "$root/serve.log"; say "autobuilder did not start" >&2; exit 1; }
  sleep 0.1
done

push_next
echo
say "watch it on http://$listen/monitor"
say "a new commit is pushed every ${every} s (a passing build, a failing one, a long coloured log); Ctrl-C stops it all"
say "push one more yourself: ./scripts/demo.sh push"
say "history: curl http://$listen/build/history    server log: $root/serve.log    artifacts: $root/artifacts"
say "running ./scripts/demo.sh again keeps this history; ./scripts/demo.sh --reset starts afresh"
echo

push_loop() {
  # Ctrl-C is for the main script, which stops this loop with SIGTERM after its push is sent.
  trap '' INT
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  while :; do
    sleep "$every" &
    sleeper=$!
    wait "$sleeper"
    push_next || say "that push failed; the next one comes in ${every} s"
  done
}
push_loop &
loop=$!

status=0
wait "$server" || status=$?
say "autobuilder exited ($status); its log: $root/serve.log"
exit "$status"

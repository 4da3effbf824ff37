#!/usr/bin/env bash
# A local demo on the embedded defaults: makes a recipes repository and an app repository on disk,
# starts `autobuilder serve`, sends it a signed push webhook, and leaves it running so that you can
# watch the build on http://127.0.0.1:5560/monitor. Needs Docker, git, openssl and busybox-static
# (for the demo's base image: no registry is needed). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/demo"
image="autobuilder-demo-busybox:latest"
secret="demo-secret"
listen="127.0.0.1:${DEMO_PORT:-5560}"

cargo build --quiet
rm -rf "$root" && mkdir -p "$root"

if ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "demo: importing $image from the host's busybox"
  busybox=$(command -v busybox || echo /bin/busybox)
  rootfs="$root/rootfs" && mkdir -p "$rootfs/bin" "$rootfs/tmp"
  cp "$busybox" "$rootfs/bin/busybox"
  for applet in $("$busybox" --list); do [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"; done
  tar -C "$rootfs" -c . | docker import - "$image" >/dev/null
fi

commit() { # repo-dir: commits everything in it, prints the sha
  git -C "$1" add -A
  git -C "$1" -c user.name=Demo -c user.email=demo@example.invalid commit -q -m "${2:-demo commit}"
  git -C "$1" rev-parse HEAD
}

mkdir -p "$root/repos/demo/recipes/demo/hello" "$root/repos/demo/hello/autobuild"
git -C "$root/repos/demo/recipes" init -q -b master
cat > "$root/repos/demo/recipes/demo/hello/master.yaml" <<'YAML'
buildscripts:
  - autobuild/build.sh
autobuild/build.sh:
  archives: /tmp/archives
  artifact: hello.tar.gz
YAML
commit "$root/repos/demo/recipes" "track demo/hello" >/dev/null

git -C "$root/repos/demo/hello" init -q -b master
echo "hello from autobuilder" > "$root/repos/demo/hello/greeting.txt"
cat > "$root/repos/demo/hello/autobuild/build.sh" <<'SH'
#!/bin/sh
set -e
echo "building $AUTOBUILDER_REPOSITORY $AUTOBUILDER_BRANCH at $AUTOBUILDER_COMMIT"
for step in 1 2 3 4 5 6 7 8 9 10; do
  printf '\033[32mstep %s/10\033[0m compiling part %s\n' "$step" "$step"
  sleep 1
done
tar -czf /tmp/archives/hello.tar.gz greeting.txt
echo "done"
SH
sha=$(commit "$root/repos/demo/hello" "say hello")

cat > "$root/config.toml" <<TOML
listen = "$listen"
public_url = "http://$listen"
data_dir = "$root/data"
tmp_directory = "$root/tmp"
[git]
clone_url = "file://$root/repos/{repo}"
[docker]
default_image = "$image"
network = "none"
[artifacts]
directory = "$root/artifacts"
[projects.demo]
recipes = "demo/recipes"
webhook_secret = "$secret"
TOML

./target/debug/autobuilder serve --config "$root/config.toml" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "http://$listen/build/status" >/dev/null && break; sleep 0.1; done

payload=$(printf '{"ref":"refs/heads/master","after":"%s","repository":{"full_name":"demo/hello"},"head_commit":{"message":"say hello","author":{"name":"Demo"}}}' "$sha")
signature="sha256=$(printf '%s' "$payload" | openssl dgst -sha256 -hmac "$secret" | sed 's/^.* //')"
echo
echo "demo: pushing demo/hello master $sha"
curl -s -X POST "http://$listen/build/demo/hook" -H "X-GitHub-Event: push" \
  -H "X-Hub-Signature-256: $signature" -H "Content-Type: application/json" -d "$payload"
echo
echo
echo "demo: watch it on http://$listen/monitor (history: http://$listen/build/history)"
echo "demo: artifacts land in $root/artifacts; Ctrl-C stops the server"
wait $server

#!/usr/bin/env bash
# Spotter's container images (deploy/container/; deploy/README.md, "Containers").
#
#   scripts/container.sh build [--cuda] [--base IMAGE] [--tag TAG] [--model NAME|DIR]...
#                              [--binary FILE] [--ort-lib DIR]
#       Stages what the image needs (the release binary, ONNX Runtime's libraries, the model
#       packages, the configuration, licences) in a temporary folder and builds it with
#       deploy/container/Containerfile, or Containerfile.cuda with --cuda. Defaults: base
#       debian:bookworm-slim, tag spotter:cpu (spotter:cuda), model starter (the first --model
#       becomes the image's default), target/release/spotter, .deps/onnxruntime/lib. --cuda needs
#       the GPU flavour of ONNX Runtime there (scripts/setup.sh installs it where nvidia-smi sees
#       a GPU). The binary runs on the base image's glibc: build on Debian 12 bookworm.
#   scripts/container.sh base [--tag TAG]
#       A Debian 12 bookworm base image made here, without an image registry: debootstrap
#       --variant=minbase from this machine's apt mirror (or $SPOTTER_DEBIAN_MIRROR), kept as
#       .cache/container/bookworm-minbase.tar (made once; needs root) and imported as TAG
#       (default spotter-base:bookworm). Then: build --base spotter-base:bookworm.
#   scripts/container.sh test [--binary FILE]
#       End to end (tests/deploy.rs runs it): the base image, the CPU image built FROM it, the
#       container serving a read-only copy of the sample photos as its non-root user, indexing
#       and searching them, a clean stop on SIGTERM and a restart on the same index volume.
#       Removes what it made (containers, image tags, volume, folders), also when it fails.
#
# Docker: the daemon of $DOCKER_HOST (or the default socket). When none answers and this runs as
# root, one is started for the command (data in .cache/container/dockerd, no iptables, no bridge
# network: containers then need --network host) and stopped at the end.
# Exit status: 0 done, 1 failed, 2 usage, 77 cannot run here (no docker, no daemon, or the base
# image needs debootstrap and root); the message says what to do.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE=.cache/container
BASE_TARBALL=$CACHE/bookworm-minbase.tar
BASE_TAG=spotter-base:bookworm
IMAGE_UID=10001
STARTED=$(date +%s)

say() { printf '[container +%ss] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
die() {
  printf 'container.sh: %s\n' "$*" >&2
  exit 1
}
cannot_run() {
  printf 'container.sh: cannot run here: %s\n' "$*" >&2
  exit 77
}
usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }

# What this command made, removed by cleanup() however it ends.
STAGING=""
ROOTFS=""
WORK=""
DOCKERD_PID=""
DOCKERD_RUN=""
T_CONTAINERS=()
T_VOLUME=""
T_IMAGE=""
T_BASE_MADE=""
T_IMAGES_BEFORE=""

cleanup() {
  local rc=$?
  set +e
  local c id
  for c in "${T_CONTAINERS[@]}"; do
    docker rm -f -v "$c" >/dev/null 2>&1
  done
  if [[ -n $T_VOLUME ]]; then docker volume rm -f "$T_VOLUME" >/dev/null 2>&1; fi
  if [[ -n $T_IMAGE ]]; then docker rmi -f "$T_IMAGE" >/dev/null 2>&1; fi
  # Untagged layers of a build that failed half-way (a finished image's went with its tag).
  if [[ -n $T_IMAGES_BEFORE ]]; then
    for _ in 1 2; do
      for id in $(docker images -aq --no-trunc | sort -u | comm -13 "$T_IMAGES_BEFORE" -); do
        if [[ $(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null) == 0 ]]; then
          docker rmi "$id" >/dev/null 2>&1
        fi
      done
    done
    rm -f "$T_IMAGES_BEFORE"
  fi
  if [[ -n $T_BASE_MADE ]]; then docker rmi "$T_BASE_MADE" >/dev/null 2>&1; fi
  if [[ -n $STAGING ]]; then rm -rf "$STAGING"; fi
  # --one-file-system: never into a /proc or /sys that a failed debootstrap left mounted.
  if [[ -n $ROOTFS ]]; then rm -rf --one-file-system "$ROOTFS"; fi
  if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
  stop_dockerd
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Docker --------------------------------------------------------------------------------------

ensure_docker() {
  command -v docker >/dev/null 2>&1 ||
    cannot_run "the docker command is missing: install Docker (Debian: apt-get install docker.io; scripts/test.sh does)"
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  local why
  why=$(docker info 2>&1 | grep -i -m 1 -E 'cannot connect|permission denied|error during connect' || true)
  why=${why:-docker info fails}
  if [[ $(id -u) -ne 0 ]]; then
    cannot_run "no Docker daemon answers ($why): start one (systemctl start docker) and give this user access to it (the docker group), or run as root to have one started here"
  fi
  command -v dockerd >/dev/null 2>&1 ||
    cannot_run "no Docker daemon answers ($why) and dockerd is not installed (apt-get install docker.io)"
  mkdir -p "$CACHE/dockerd"
  # A short private folder for its sockets (a Unix socket path has at most 107 bytes).
  DOCKERD_RUN=$(mktemp -d /tmp/spotter-dockerd.XXXXXX)
  local log=$CACHE/dockerd/dockerd.log
  say "no Docker daemon answers: starting dockerd for this command (data: $CACHE/dockerd/data, log: $log)"
  setsid dockerd --data-root "$ROOT/$CACHE/dockerd/data" --exec-root "$DOCKERD_RUN/exec" \
    --pidfile "$DOCKERD_RUN/dockerd.pid" --host "unix://$DOCKERD_RUN/docker.sock" \
    --iptables=false --bridge=none >"$log" 2>&1 </dev/null &
  DOCKERD_PID=$!
  export DOCKER_HOST="unix://$DOCKERD_RUN/docker.sock"
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
      say "dockerd ready (pid $DOCKERD_PID)"
      return 0
    fi
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  tail -n 5 "$log" >&2
  stop_dockerd
  cannot_run "dockerd did not start (its log above, $log); inside a container without privileges Docker cannot run: use a machine or VM where it can"
}

stop_dockerd() {
  [[ -n $DOCKERD_PID ]] || return 0
  if kill -0 "$DOCKERD_PID" 2>/dev/null; then
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 30); do
      kill -0 "$DOCKERD_PID" 2>/dev/null || break
      sleep 1
    done
    # Still there after 30 s: it and its containerd (its own process group, from setsid).
    kill -KILL -- "-$DOCKERD_PID" 2>/dev/null || true
  fi
  wait "$DOCKERD_PID" 2>/dev/null || true
  say "stopped the dockerd started for this command"
  # It leaves its network namespace mounted in the exec root (exec/netns/default).
  local mount
  while read -r mount; do
    umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true
  done < <(awk -v dir="$DOCKERD_RUN/" 'index($2, dir) == 1 { print $2 }' /proc/mounts | sort -r)
  rm -rf --one-file-system "$DOCKERD_RUN"
  DOCKERD_PID=""
  unset DOCKER_HOST
}

# A daemon started with --bridge=none has no default network: containers and build steps use
# the host's.
network_args() {
  if docker network inspect bridge >/dev/null 2>&1; then
    NET=()
  else
    NET=(--network host)
  fi
}

# Base image ----------------------------------------------------------------------------------

# The first Debian mirror of this machine's apt sources (deb822 files, then the one-line format).
apt_mirror() {
  if [[ -n ${SPOTTER_DEBIAN_MIRROR:-} ]]; then
    printf '%s\n' "$SPOTTER_DEBIAN_MIRROR"
    return 0
  fi
  local id
  id=$(sed -n 's/^ID=//p' /etc/os-release 2>/dev/null | tr -d '"')
  [[ $id == debian ]] || return 1
  local uri="" sources=() lists=() f
  for f in /etc/apt/sources.list.d/*.sources; do [[ -f $f ]] && sources+=("$f"); done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [[ -f $f ]] && lists+=("$f"); done
  if ((${#sources[@]})); then
    # A stanza of type deb, enabled, with a release suite (not -security, -updates, ...).
    uri=$(awk 'BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^[ \t]*#/ || index($i, ":") == 0) continue
          key = tolower(substr($i, 1, index($i, ":") - 1)); value = substr($i, index($i, ":") + 1)
          if (key == "types") types = value
          else if (key == "uris") uris = value
          else if (key == "suites") suites = value
          else if (key == "enabled") enabled = tolower(value)
        }
        if (types !~ /(^|[ \t])deb([ \t]|$)/ || enabled ~ /no/) next
        release = 0; n = split(suites, s, /[ \t]+/)
        for (j = 1; j <= n; j++) if (s[j] != "" && s[j] !~ /-/) release = 1
        if (!release) next
        n = split(uris, u, /[ \t]+/)
        for (j = 1; j <= n; j++) if (u[j] ~ /^(https?|file):/) { print u[j]; exit }
      }' "${sources[@]}")
  fi
  if [[ -z $uri ]] && ((${#lists[@]})); then
    uri=$(awk '$1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
        if ($i ~ /^(https?|file):/ && $(i + 1) !~ /-/) { print $i; exit }
      }' "${lists[@]}")
  fi
  [[ -n $uri ]] && printf '%s\n' "$uri"
}

make_base_tarball() {
  [[ $(id -u) -eq 0 ]] ||
    cannot_run "making the base image needs root (debootstrap): run scripts/container.sh base as root once ($BASE_TARBALL is reused after that), or build on debian:bookworm-slim"
  local debootstrap
  debootstrap=$(command -v debootstrap || echo /usr/sbin/debootstrap)
  [[ -x $debootstrap ]] ||
    cannot_run "debootstrap is missing: apt-get install debootstrap (scripts/test.sh does)"
  local mirror
  mirror=$(apt_mirror) ||
    die "no Debian mirror in this machine's apt sources (/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list): set SPOTTER_DEBIAN_MIRROR to the URL of a Debian mirror"
  mkdir -p "$CACHE"
  ROOTFS=$(mktemp -d /tmp/spotter-rootfs.XXXXXX)
  local log=$CACHE/debootstrap.log
  say "debootstrap --variant=minbase bookworm from this machine's apt mirror (about 30 s; log: $log)"
  if ! "$debootstrap" --variant=minbase bookworm "$ROOTFS" "$mirror" >"$log" 2>&1; then
    tail -n 15 "$log" >&2
    die "debootstrap failed (above; $log): is the mirror reachable? SPOTTER_DEBIAN_MIRROR=URL picks another one"
  fi
  # Package caches and logs go; resolv.conf and hostname are the host's, docker provides its own.
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/*
  find "$ROOTFS/var/log" -type f -delete
  : >"$ROOTFS/etc/resolv.conf"
  : >"$ROOTFS/etc/hostname"
  tar --numeric-owner --one-file-system -C "$ROOTFS" --exclude='./dev/*' -cf "$BASE_TARBALL.part" .
  mv "$BASE_TARBALL.part" "$BASE_TARBALL"
  rm -rf --one-file-system "$ROOTFS"
  ROOTFS=""
  say "base root file system kept as $BASE_TARBALL ($(du -m "$BASE_TARBALL" | cut -f1) MB)"
}

# make_base TAG: the image from the cached tarball, made first if need be.
make_base() {
  local tag=$1
  if docker image inspect "$tag" >/dev/null 2>&1; then
    say "base image $tag: present"
    return 0
  fi
  [[ -f $BASE_TARBALL ]] || make_base_tarball
  say "docker import $BASE_TARBALL as $tag"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "Debian 12 bookworm, debootstrap --variant=minbase (scripts/container.sh base)" \
    "$BASE_TARBALL" "$tag" >/dev/null
}

cmd_base() {
  local tag=$BASE_TAG
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --tag) tag=${2:?--tag needs a value}; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) echo "container.sh base: unknown option $1" >&2; exit 2 ;;
    esac
  done
  ensure_docker
  make_base "$tag"
  say "done: scripts/container.sh build --base $tag"
}

# Build ---------------------------------------------------------------------------------------

cmd_build() {
  local cuda=0 base=debian:bookworm-slim tag="" bin=target/release/spotter ort=.deps/onnxruntime/lib
  local models=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --cuda) cuda=1; shift ;;
      --base) base=${2:?--base needs an image}; shift 2 ;;
      --tag) tag=${2:?--tag needs a value}; shift 2 ;;
      --model) models+=("${2:?--model needs a package name or folder}"); shift 2 ;;
      --binary) bin=${2:?--binary needs a file}; shift 2 ;;
      --ort-lib) ort=${2:?--ort-lib needs a folder}; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) echo "container.sh build: unknown option $1" >&2; exit 2 ;;
    esac
  done
  if [[ -z $tag ]]; then
    if ((cuda)); then tag=spotter:cuda; else tag=spotter:cpu; fi
  fi
  ((${#models[@]})) || models=(starter)

  [[ -x $bin ]] || die "$bin is missing: run scripts/setup.sh (it makes the release build)"
  compgen -G "$ort/libonnxruntime.so*" >/dev/null ||
    die "no ONNX Runtime library (libonnxruntime.so*) in $ort: run scripts/setup.sh"
  local flavour
  flavour=$(cat "$ort/.installed" 2>/dev/null || echo "unknown flavour")
  if ((cuda)); then
    [[ -f $ort/libonnxruntime_providers_cuda.so ]] ||
      die "--cuda needs the GPU flavour of ONNX Runtime, and $ort holds another ($flavour; no libonnxruntime_providers_cuda.so). On a machine where nvidia-smi sees an NVIDIA GPU, scripts/setup.sh installs it (onnxruntime-gpu and NVIDIA's CUDA and cuDNN wheels, in place of the CPU flavour), then build --cuda there; or give --ort-lib DIR holding libonnxruntime.so*, libonnxruntime_providers_cuda.so and the CUDA libraries"
    compgen -G "$ort/libcudnn*.so*" >/dev/null ||
      die "--cuda: no cuDNN (libcudnn*.so*) in $ort beside the CUDA provider; scripts/setup.sh copies NVIDIA's libraries there on a GPU machine"
  fi
  local dirs=() names=() m dir name
  for m in "${models[@]}"; do
    if [[ -d $m ]]; then dir=$m; else dir=exported_onnx/$m; fi
    [[ -f $dir/model.json ]] ||
      die "model package $m not found ($dir/model.json is missing): scripts/setup.sh makes exported_onnx/starter; give a package name in exported_onnx/ or a package folder"
    name=$(basename "$(cd "$dir" && pwd -P)")
    [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "model package folder name '$name' has characters other than letters, digits, '.', '_' and '-'"
    dirs+=("$dir")
    names+=("$name")
  done

  ensure_docker
  network_args
  local version
  version=$("$bin" --version | awk '{print $2}')
  STAGING=$(mktemp -d "${TMPDIR:-/tmp}/spotter-image.XXXXXX")
  chmod 755 "$STAGING"
  mkdir -p "$STAGING"/{bin,onnxruntime,models,doc}
  # Debug information is most of the release binary's size; symbols stay for backtraces.
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$STAGING/bin/spotter" "$bin"
  else
    cp "$bin" "$STAGING/bin/spotter"
  fi
  if ((cuda)); then
    cp -L "$ort"/lib*.so* "$STAGING/onnxruntime/"
  else
    # The core library and the shared provider bridge: a GPU flavour's CUDA parts stay out.
    cp -L "$ort"/libonnxruntime.so* "$STAGING/onnxruntime/"
    if [[ -f $ort/libonnxruntime_providers_shared.so ]]; then
      cp -L "$ort/libonnxruntime_providers_shared.so" "$STAGING/onnxruntime/"
    fi
  fi
  local i
  for i in "${!dirs[@]}"; do
    cp -rL "${dirs[i]}" "$STAGING/models/${names[i]}"
  done
  sed "s/^model = .*/model = \"${names[0]}\"/" deploy/container/config.toml >"$STAGING/config.toml"
  # Licences: Spotter's, and those of the libraries shipped beside it when setup.sh left them.
  cp LICENSE "$STAGING/doc/LICENSE"
  local notices=() f
  if ((cuda)); then
    notices=(.deps/ort-gpu/onnxruntime/LICENSE .deps/ort-gpu/onnxruntime/ThirdPartyNotices.txt)
  else
    notices=(.venv/lib/python3*/site-packages/onnxruntime/LICENSE .venv/lib/python3*/site-packages/onnxruntime/ThirdPartyNotices.txt)
  fi
  for f in "${notices[@]}"; do
    if [[ -f $f ]]; then
      mkdir -p "$STAGING/doc/onnxruntime"
      cp "$f" "$STAGING/doc/onnxruntime/"
    fi
  done
  if ((cuda)); then
    for f in .deps/ort-gpu/nvidia_*.dist-info/License.txt .deps/ort-gpu/nvidia_*.dist-info/LICENSE*; do
      if [[ -f $f ]]; then
        mkdir -p "$STAGING/doc/nvidia"
        cp "$f" "$STAGING/doc/nvidia/$(basename "$(dirname "$f")" .dist-info).txt"
      fi
    done
  fi
  [[ -d $STAGING/doc/onnxruntime ]] ||
    echo "container.sh: warning: ONNX Runtime's licence files were not found (setup.sh's .venv or .deps/ort-gpu); add them to the image's /usr/share/doc/spotter before distributing it" >&2

  local file=deploy/container/Containerfile
  if ((cuda)); then file=deploy/container/Containerfile.cuda; fi
  say "docker build -f $file -t $tag (base $base; context $(du -sm "$STAGING" | cut -f1) MB: spotter $version, ONNX Runtime $flavour, models ${names[*]})"
  docker build "${NET[@]}" --force-rm -f "$file" --build-arg "BASE=$base" \
    --build-arg "VERSION=$version" -t "$tag" "$STAGING"
  rm -rf "$STAGING"
  STAGING=""
  # The binary and the libraries must run on the base image's glibc.
  local said
  said=$(docker run --rm --network none --entrypoint spotter "$tag" --version) ||
    die "the image's spotter does not run (base $base): its glibc must be at least the build machine's (Debian 12 bookworm: 2.36)"
  [[ $said == "spotter $version" ]] || die "the image's spotter says '$said', expected 'spotter $version'"
  say "built $tag ($(($(docker image inspect -f '{{.Size}}' "$tag") / 1000000)) MB; $said)"
}

# End-to-end test -----------------------------------------------------------------------------

BASE_URL=""
# The bearer token the requests carry, once the server has one.
API_TOKEN=""

# api PATH [EXPR [ARG]]: GET PATH of the test server as JSON and print EXPR of it (a Python
# expression over `d`, ARG in sys.argv[3]; strings bare, anything else as JSON).
api() {
  API_TOKEN=$API_TOKEN python3 - "$BASE_URL$1" "${2:-d}" "${3:-}" <<'EOF'
import json, os, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if os.environ.get("API_TOKEN"):
    request.add_header("Authorization", "Bearer " + os.environ["API_TOKEN"])
with urllib.request.urlopen(request, timeout=10) as response:
    d = json.load(response)
value = eval(sys.argv[2], {"d": d, "json": json, "sys": sys})
print(value if isinstance(value, str) else json.dumps(value))
EOF
}

# sha256 of what GET PATH answers.
api_sha256() {
  API_TOKEN=$API_TOKEN python3 - "$BASE_URL$1" <<'EOF'
import hashlib, os, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if os.environ.get("API_TOKEN"):
    request.add_header("Authorization", "Bearer " + os.environ["API_TOKEN"])
with urllib.request.urlopen(request, timeout=10) as response:
    print(hashlib.sha256(response.read()).hexdigest())
EOF
}

# The HTTP status of GET PATH without a token.
status_without_token() {
  python3 - "$BASE_URL$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
        print(response.status)
except urllib.error.HTTPError as e:
    print(e.code)
EOF
}

# fail CONTAINER MESSAGE: the message and the container's last log lines, then exit 1.
fail() {
  printf 'container.sh test: FAILED: %s\n' "$2" >&2
  if [[ -n $1 ]]; then
    printf -- '--- docker logs %s (last 40 lines) ---\n' "$1" >&2
    docker logs --tail 40 "$1" >&2 || true
  fi
  exit 1
}

# start_server NAME [DOCKER-RUN-OPTION...] [-- SERVE-OPTION...]: the test image on the index
# volume and the read-only archive, hardened as deploy/README.md suggests, listening on the
# host's loopback at $PORT.
start_server() {
  local name=$1 options=() serve=()
  shift
  while [[ $# -gt 0 && $1 != -- ]]; do
    options+=("$1")
    shift
  done
  if [[ ${1:-} == -- ]]; then
    shift
    serve=("$@")
  fi
  T_CONTAINERS+=("$name")
  docker run -d --name "$name" --network host --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges --health-interval 2s \
    -v "$T_VOLUME:/var/lib/spotter" -v "$WORK/photos:/photos:ro" "${options[@]}" \
    "$T_IMAGE" serve --addr "127.0.0.1:$PORT" "${serve[@]}" >/dev/null
}

wait_health() {
  local deadline=$((SECONDS + 90))
  until [[ $(api /api/health 'd["status"]' 2>/dev/null) == ok ]]; do
    [[ $(docker inspect -f '{{.State.Running}}' "$1") == true ]] ||
      fail "$1" "the container stopped before answering (exit code $(docker inspect -f '{{.State.ExitCode}}' "$1"))"
    ((SECONDS < deadline)) || fail "$1" "no answer from $BASE_URL/api/health within 90 s"
    sleep 0.5
  done
}

# wait_index_job NAME: waits (bounded) for the newest index job (the one serve --archive queues
# at start) to end, fails unless it is done, and prints "ID INDEXED UNCHANGED PROPOSALS SECONDS".
wait_index_job() {
  local deadline=$((SECONDS + 300)) state
  while :; do
    state=$(api /api/jobs '[j for j in d["jobs"] if j["spec"]["kind"] == "index"][0]["state"]' 2>/dev/null) || state=none
    case $state in
      done) break ;;
      failed | cancelled) fail "$1" "the index job ended $state: $(api /api/jobs '[j for j in d["jobs"] if j["spec"]["kind"] == "index"][0]')" ;;
    esac
    ((SECONDS < deadline)) || fail "$1" "the index job did not end within 300 s (state: $state)"
    sleep 1
  done
  api /api/jobs '(lambda r, j: "%d %d %d %d %.1f" % (j["id"], r["indexed"], r["unchanged"], r["proposals_added"], r["seconds"]))(*[(j["result"], j) for j in d["jobs"] if j["spec"]["kind"] == "index"][0])'
}

wait_healthy_status() {
  local deadline=$((SECONDS + 60)) status
  while :; do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$1")
    [[ $status == healthy ]] && return 0
    ((SECONDS < deadline)) ||
      fail "$1" "docker still says '$status' after 60 s: $(docker inspect -f '{{json .State.Health.Log}}' "$1" | tail -c 600)"
    sleep 1
  done
}

# stop_server NAME: docker stop (SIGTERM) must end it within the server's 10 s grace, status 0.
stop_server() {
  local t0 ms code
  t0=$(date +%s%N)
  docker stop -t 30 "$1" >/dev/null
  ms=$((($(date +%s%N) - t0) / 1000000))
  code=$(docker inspect -f '{{.State.ExitCode}}' "$1")
  [[ $code == 0 ]] || fail "$1" "exit code $code after docker stop (SIGTERM), expected 0"
  ((ms < 12000)) || fail "$1" "docker stop took $ms ms: the server should end within 10 s of SIGTERM"
  say "docker stop (SIGTERM): exited with status 0 after $ms ms"
}

cmd_test() {
  local bin=target/release/spotter
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --binary) bin=${2:?--binary needs a file}; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) echo "container.sh test: unknown option $1" >&2; exit 2 ;;
    esac
  done
  command -v python3 >/dev/null 2>&1 || cannot_run "python3 is missing (the test's HTTP client)"
  [[ -f data/samples/.complete ]] || die "data/samples is missing: run scripts/setup.sh"
  [[ -x $bin ]] || die "$bin is missing: run scripts/setup.sh (it makes the release build)"
  ensure_docker
  local run_id t
  run_id="$$-$(date +%s)"

  t=$SECONDS
  if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    T_BASE_MADE=$BASE_TAG
  fi
  make_base "$BASE_TAG"
  local t_base=$((SECONDS - t))

  t=$SECONDS
  T_IMAGES_BEFORE=$(mktemp /tmp/spotter-images.XXXXXX)
  docker images -aq --no-trunc | sort -u >"$T_IMAGES_BEFORE"
  T_IMAGE=spotter-test:$run_id
  cmd_build --base "$BASE_TAG" --tag "$T_IMAGE" --binary "$bin"
  local t_build=$((SECONDS - t))

  # The archive: a copy of the sample photos, readable by the image's user, mounted read-only.
  WORK=$(mktemp -d /tmp/spotter-container-test.XXXXXX)
  mkdir -m 755 "$WORK/photos"
  cp data/samples/*.png data/samples/*.jpg "$WORK/photos/"
  chmod 644 "$WORK"/photos/*
  local count
  count=$(find "$WORK/photos" -type f | wc -l)
  T_VOLUME=spotter-test-index-$run_id
  docker volume create "$T_VOLUME" >/dev/null
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  BASE_URL=http://127.0.0.1:$PORT
  local first=spotter-test-$run_id-1 second=spotter-test-$run_id-2

  t=$SECONDS
  say "docker run $T_IMAGE serve (uid $IMAGE_UID, --read-only, $count photos at /photos read-only, index volume $T_VOLUME, port $PORT)"
  start_server "$first"
  wait_health "$first"
  say "the server answers /api/health"
  local job job_id indexed unchanged proposals seconds
  job=$(wait_index_job "$first")
  read -r job_id indexed unchanged proposals seconds <<<"$job"
  [[ $indexed == "$count" ]] || fail "$first" "the index job indexed $indexed photos, expected $count"
  say "the index job queued by serve --archive is done: $indexed photos, $proposals objects, $seconds s"
  local t_index=$((SECONDS - t))

  local images
  images=$(api /api/stats 'd["images"]')
  [[ $images == "$count" ]] || fail "$first" "/api/stats counts $images images, expected $count"
  local roots
  roots=$(api /api/stats 'd["roots"]')
  [[ $roots == '["/photos"]' ]] || fail "$first" "the index's archive roots are $roots, expected [\"/photos\"]"
  # Hits name their root (by id) and the path inside it.
  local top top_path top_image
  top=$(api "/api/search?q=cat&k=5" '"%s/%s %s" % (json.loads(sys.argv[3])[d["hits"][0]["root"]], d["hits"][0]["path"], d["hits"][0]["image"])' "$roots")
  read -r top_path top_image <<<"$top"
  [[ $top_path == /photos/chelsea.png ]] ||
    fail "$first" "the best hit for 'cat' is $top_path, expected /photos/chelsea.png"
  local moto
  moto=$(api "/api/search?q=motorbike&k=5" 'd["hits"][0]["path"]')
  [[ $moto == motorcycle_* ]] || fail "$first" "the best hit for 'motorbike' is $moto, expected a motorcycle photo"
  [[ $(api_sha256 "/api/images/$top_image") == $(sha256sum "$WORK/photos/chelsea.png" | cut -d' ' -f1) ]] ||
    fail "$first" "/api/images/$top_image is not the bytes of chelsea.png"
  say "search: 'cat' -> $top_path (the original served intact), 'motorbike' -> /photos/$moto"
  # The command line inside the container reaches the server through INDEX/serve.json.
  local cli
  cli=$(docker exec "$first" spotter search cat -k 1 --json) ||
    fail "$first" "docker exec ... spotter search cat failed"
  [[ $(python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["path"])' <<<"$cli") == /photos/chelsea.png ]] ||
    fail "$first" "docker exec ... spotter search cat answered $cli, expected /photos/chelsea.png first"
  say "docker exec ... spotter search cat: /photos/chelsea.png, through the running server"

  # The server's own process runs as the image's user; nobody in the container can write the
  # archive (not even root) or the image's files.
  local uids
  uids=$(docker exec "$first" sed -n 's/^Uid:\s*//p' /proc/1/status | tr -s ' \t' ' ')
  [[ $uids == "$IMAGE_UID $IMAGE_UID $IMAGE_UID $IMAGE_UID" ]] ||
    fail "$first" "the server runs with uids '$uids', expected $IMAGE_UID"
  if docker exec "$first" touch /photos/written-by-the-container 2>/dev/null ||
    docker exec -u 0 "$first" touch /photos/written-by-the-container 2>/dev/null ||
    [[ -e $WORK/photos/written-by-the-container ]]; then
    fail "$first" "the container could write into the archive mounted read-only at /photos"
  fi
  if docker exec "$first" touch /usr/local/bin/spotter 2>/dev/null; then
    fail "$first" "the container's user could write the image's files"
  fi
  say "runs as uid $IMAGE_UID; /photos and the image's files are not writable"
  # The image's environment: no colour codes in the log, ONNX Runtime's telemetry off (it
  # would warn about the missing CA bundle otherwise).
  if docker logs "$first" 2>&1 | grep -q $'\e'; then
    fail "$first" "the log has colour codes (NO_COLOR is not in the image's environment?)"
  fi
  if docker logs "$first" 2>&1 | grep -qi telemetry; then
    fail "$first" "ONNX Runtime's telemetry is on (ORT_DISABLE_TELEMETRY is not in the image's environment?)"
  fi
  wait_healthy_status "$first"
  say "docker reports the container healthy (HEALTHCHECK: spotter stats through the server)"

  t=$SECONDS
  stop_server "$first"
  local t_stop=$((SECONDS - t))

  # A new container on the same volume, now with a token file mounted read-only as a secret:
  # the index is there, and the start's rescan finds nothing new.
  t=$SECONDS
  docker rm -v "$first" >/dev/null
  local token
  token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  printf '%s\n' "$token" >"$WORK/spotter-token"
  chown "$IMAGE_UID:$IMAGE_UID" "$WORK/spotter-token"
  chmod 400 "$WORK/spotter-token"
  start_server "$second" -v "$WORK/spotter-token:/run/secrets/spotter-token:ro" \
    -- --token-file /run/secrets/spotter-token
  API_TOKEN=$token
  wait_health "$second"
  local denied
  denied=$(status_without_token /api/stats)
  [[ $denied == 401 ]] || fail "$second" "GET /api/stats without the token answered $denied, expected 401"
  say "restarted with --token-file from a read-only bind mount: requests without the token get 401"
  local again again_id
  again=$(wait_index_job "$second")
  read -r again_id indexed unchanged proposals seconds <<<"$again"
  ((again_id > job_id)) || fail "$second" "no new index job after the restart"
  [[ $indexed == 0 && $unchanged == "$count" ]] ||
    fail "$second" "the rescan after the restart indexed $indexed photos and found $unchanged unchanged, expected 0 and $count"
  images=$(api /api/stats 'd["images"]')
  [[ $images == "$count" ]] || fail "$second" "after a restart on the same volume /api/stats counts $images images, expected $count"
  [[ $(api "/api/search?q=cat&k=5" 'd["hits"][0]["path"]') == chelsea.png ]] ||
    fail "$second" "after the restart 'cat' no longer finds chelsea.png"
  say "restarted on the same index volume: $images images, 'cat' -> chelsea.png; its rescan found all $unchanged photos unchanged"
  wait_healthy_status "$second"
  say "healthy with the token too (spotter stats takes it from serve.json)"
  stop_server "$second"
  local t_restart=$((SECONDS - t))

  say "container test passed in $(($(date +%s) - STARTED)) s (base image ${t_base} s, image build ${t_build} s, start + indexing ${t_index} s, stop ${t_stop} s, restart ${t_restart} s); cleaning up"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  base) shift; cmd_base "$@" ;;
  test) shift; cmd_test "$@" ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac

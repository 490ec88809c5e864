#!/usr/bin/env bash
# Build a local Python 3.11 Debian base image with mmdebstrap, for machines that cannot pull from a
# registry. It stands in for the default BASE_IMAGE (python:3.11-slim-bookworm): Debian bookworm's
# python3 IS 3.11.
#
#   docker/bootstrap-base.bash [TAG]                  # default localhost/py311-base:bookworm
#   docker/bootstrap-base.bash --host-ca [TAG]        # plus TAG-ca: this machine's CA bundle trusted
#
# --host-ca adds a layer on top (tag suffix "-ca", e.g. localhost/py311-base:bookworm-ca) that copies
# this machine's CA bundle and points pip/OpenSSL at it, for networks that intercept TLS (CI here).
# It is for such builds only: the user's image and the default BASE_IMAGE never carry it.
# Uses the Docker engine when it answers, else buildah.
set -euo pipefail

host_ca=0
if [ "${1:-}" = --host-ca ]; then
  host_ca=1
  shift
fi
tag="${1:-localhost/py311-base:bookworm}"

die() {
  echo "error: $*" >&2
  exit 2
}

if docker info > /dev/null 2>&1; then
  engine=docker
else
  command -v buildah > /dev/null || die "neither a Docker engine nor buildah is available: install one"
  engine=buildah
fi

exists() {
  if [ "$engine" = docker ]; then docker image inspect "$1" > /dev/null 2>&1; else buildah inspect --type image "$1" > /dev/null 2>&1; fi
}

if exists "$tag"; then
  echo "base image $tag exists"
else
  command -v mmdebstrap > /dev/null || die "mmdebstrap is not installed: apt-get install mmdebstrap"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,git \
    --format=tar bookworm "$work/rootfs.tar"
  env_path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  if [ "$engine" = docker ]; then
    docker import --change "ENV $env_path" --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$tag" > /dev/null
  else
    container="$(buildah from scratch)"
    mnt="$(buildah mount "$container")"
    tar -xf "$work/rootfs.tar" -C "$mnt"
    buildah umount "$container" > /dev/null
    buildah config --env "$env_path" --cmd /bin/bash "$container"
    buildah commit --quiet "$container" "$tag" > /dev/null
    buildah rm "$container" > /dev/null
  fi
  echo "base image $tag built"
fi

if [ "$host_ca" = 1 ]; then
  [ "$engine" = docker ] || die "--host-ca needs a Docker engine"
  ca="$(python3 -c 'import ssl; print(ssl.get_default_verify_paths().cafile or "")')"
  ca="${SSL_CERT_FILE:-$ca}"
  [ -f "$ca" ] || die "no CA bundle found on this machine (set SSL_CERT_FILE=/path/to/bundle.pem)"
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx" "${work:-}"' EXIT
  cp "$ca" "$ctx/host-ca.pem"
  cat > "$ctx/Dockerfile" << EOF
FROM $tag
COPY host-ca.pem /etc/ssl/certs/host-ca.pem
ENV PIP_CERT=/etc/ssl/certs/host-ca.pem SSL_CERT_FILE=/etc/ssl/certs/host-ca.pem REQUESTS_CA_BUNDLE=/etc/ssl/certs/host-ca.pem
EOF
  DOCKER_BUILDKIT=0 docker build --quiet --network host --tag "$tag-ca" "$ctx" > /dev/null
  echo "base image $tag-ca built (this machine's CA bundle trusted)"
fi

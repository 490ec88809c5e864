#!/usr/bin/env bash
# Build a local Python 3.11 Debian base image with mmdebstrap, for machines that cannot pull from a
# registry (CI here). It stands in for the default BASE_IMAGE (python:3.11-slim-bookworm): Debian
# bookworm's python3 IS 3.11. Usage: docker/bootstrap-base.bash [TAG]  (default localhost/py311-base)
set -euo pipefail

tag="${1:-localhost/py311-base:bookworm}"
for tool in mmdebstrap buildah; do
  command -v "$tool" > /dev/null || { echo "error: $tool is not installed: apt-get install $tool" >&2; exit 2; }
done
if buildah inspect --type image "$tag" > /dev/null 2>&1; then
  echo "base image $tag exists"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mmdebstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,git \
  --format=tar bookworm "$work/rootfs.tar" http://deb.debian.org/debian
buildah import "$work/rootfs.tar" "$tag" > /dev/null 2>&1 || {
  # older buildah has no `import`: make the image from scratch
  container="$(buildah from scratch)"
  mnt="$(buildah mount "$container")"
  tar -xf "$work/rootfs.tar" -C "$mnt"
  buildah umount "$container" > /dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$container"
  buildah commit --quiet "$container" "$tag" > /dev/null
  buildah rm "$container" > /dev/null
}
echo "base image $tag built"

#!/usr/bin/env bash
# Set up tailor on Debian 12: the Debian packages the pipeline runs (qemu, the
# kernel source, the kernel's build tools, busybox, e2fsprogs, ...) and a venv
# in .venv with the pinned Python dependencies of requirements.txt.
# Idempotent: a second run installs nothing and takes seconds.
set -euo pipefail
cd "$(dirname "$0")"

packages=(
  qemu-system-x86 qemu-utils busybox-static  # qemu-utils: qemu-img, the copy-on-write layer of `tailor run`
  build-essential bc flex bison libelf-dev libssl-dev dwarves
  e2fsprogs cpio ccache xz-utils patch lintian
  python3 python3-venv ca-certificates
  chromium  # tests/test_report.py renders the measurement report in headless Chromium
  skopeo           # rootfs.image: fetches docker:// images and converts docker-archive: files to OCI layouts
  docker-registry  # tests/test_image_registry.py serves images from a plain-HTTP registry on 127.0.0.1
  distcc redis-server  # building on many machines: helpers and the shared ccache (tests run them on loopback)
  redis-tools apache2-utils libmemcached-tools curl  # test.exercise clients: redis-benchmark, ab, memcslap/memcstat, curl
  gcc-11  # tests/test_farm.py: a helper with another gcc, which tailor must refuse
  gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-system-arm  # arch: arm64 recipes: the cross gcc, qemu-system-aarch64
)

# `./setup.sh --catalogue` also installs what the whole catalogue needs on the build host:
# compilers for the apps built at build time and the clients of the database probes.
if [ "${1:-}" = "--catalogue" ]; then
  packages+=(golang-go openjdk-17-jdk-headless postgresql-client mariadb-client amqp-tools)
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: run as root or install sudo" >&2; exit 1; }
  sudo=sudo
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The rootfs stage asks apt for package indexes: make sure there are some.
lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -n 1)
if [ "${#missing[@]}" -gt 0 ] || [ -z "$lists" ]; then
  echo "setup: installing Debian packages: ${missing[*]:-(refreshing package lists)}"
  $sudo apt-get update -q
  if [ "${#missing[@]}" -gt 0 ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv with the pinned Python dependencies"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > .venv/.requirements.sha256
fi
echo "setup: ready (activate with: . .venv/bin/activate)"

#!/usr/bin/env bash
# Builds the nvme-dio fio ioengine (fio/nvme_dio_fio.c) into target/fio/libnvme_dio_fio.so.
#
#   fio/build.sh            -> target/fio/libnvme_dio_fio.so   (prints its path last)
#   fio/build.sh --with-fio -> also target/fio/fio, fio built from that same source (the VM
#                              suite's guest has no Debian packages: it gets this one), and
#                              target/fio/t_io_uring (fio's t/io_uring, static: ci/vm-bench)
#
# Idempotent. What it does, each step skipped when already done:
#  1. installs Debian's `fio` binary package (the fio that runs the engine) if missing;
#  2. fetches fio's source from Debian's source package for exactly that version, with a
#     private apt source list (nothing in /etc changes), into target/fio/src/fio-3.33;
#  3. runs fio's ./configure --disable-native there, which writes config-host.h: the engine
#     must see the same struct layouts (thread_data, io_u, ioengine_ops) as the fio binary;
#  4. builds the C ABI (cargo build -p nvme-dio-capi --release, under the shared build lock);
#  5. compiles fio/nvme_dio_fio.c against those headers and links libnvme_dio_capi.a in.
#
# The fio version is pinned (FIO_VERSION below): the engine checks the running fio's
# version when it is loaded and refuses another one.
set -euo pipefail
with_fio=
case "${1:-}" in
  --with-fio) with_fio=1 ;;
  "") ;;
  *) echo "usage: fio/build.sh [--with-fio]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
root=$PWD
FIO_VERSION=3.33
# Every compile takes the shared build lock (2 cores, several builders). NVME_DIO_BUILD_LOCK=none
# when the caller already holds it (ci/test runs under it; a second flock would deadlock).
LOCK=${NVME_DIO_BUILD_LOCK:-/tmp/nvme-dio-build.lock}
locked() { if [ "$LOCK" = none ]; then "$@"; else flock "$LOCK" "$@"; fi; }
out=$root/target/fio
src=$out/src
mkdir -p "$out" "$src"

apt_updated=
apt_update() { [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }; }

# 1. Debian's fio binary.
if ! command -v fio >/dev/null; then
  echo "fio/build.sh: installing Debian's fio" >&2
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
fi
have=$(fio --version | sed 's/^fio-//')
if [ "$have" != "$FIO_VERSION" ]; then
  echo "fio/build.sh: the installed fio is $have; this engine is pinned to fio $FIO_VERSION" >&2
  exit 1
fi

# 2. fio's source, the same version, from Debian's source package.
tree=$src/fio-$FIO_VERSION
if [ ! -f "$tree/fio.h" ]; then
  d=$(mktemp -d)
  chmod 755 "$d" # apt's _apt user downloads into it
  trap 'rm -rf "$d"' EXIT
  mkdir -p "$d/lists/partial"
  uri=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources | head -1)
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" >"$d/src.sources"
  o=(-o "Dir::Etc::SourceParts=$d" -o Dir::Etc::SourceList=/dev/null -o "Dir::State::Lists=$d/lists")
  apt-get "${o[@]}" update -qq
  # The source of exactly the installed binary package (Debian version, e.g. 3.33-3).
  deb=$(dpkg-query -W -f='${Version}' fio)
  (cd "$d" && apt-get "${o[@]}" source --download-only "fio=$deb" >/dev/null)
  orig=$(ls "$d"/fio_"$FIO_VERSION"*.orig.tar.* | head -1)
  rm -rf "$tree" "$src/unpack"
  mkdir -p "$src/unpack"
  tar -xf "$orig" -C "$src/unpack"
  mv "$src/unpack"/* "$tree"
  rmdir "$src/unpack"
fi

# 3. configure (config-host.h is what the engine's headers need).
if [ ! -f "$tree/config-host.h" ]; then
  (cd "$tree" && locked ./configure --disable-native >"$out/configure.log" 2>&1) || {
    echo "fio/build.sh: fio's ./configure failed; see $out/configure.log" >&2
    exit 1
  }
fi

# 4. the C ABI.
locked cargo build -q -p nvme-dio-capi --release
capi=$root/target/release/libnvme_dio_capi.a

# 5. the engine: position-independent, the C ABI linked in statically (fio dlopen()s it).
# NVD_FIO_PIN overrides the version the engine accepts and NVD_FIO_SO its path: only for
# ci/fio-test, which checks that an engine pinned to another fio is refused.
pin=${NVD_FIO_PIN:-fio-$FIO_VERSION}
so=${NVD_FIO_SO:-$out/libnvme_dio_fio.so}
if [ ! -f "$so" ] || [ "$root/fio/nvme_dio_fio.c" -nt "$so" ] || [ "$root/fio/build.sh" -nt "$so" ] || [ "$capi" -nt "$so" ] \
  || [ "$root/capi/include/nvme_dio.h" -nt "$so" ]; then
  locked cc -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter -Wno-sign-compare \
    -Wno-missing-field-initializers \
    -D_GNU_SOURCE -D_LARGEFILE_SOURCE -D_FILE_OFFSET_BITS=64 -include "$tree/config-host.h" \
    -DNVD_FIO_VERSION="\"$pin\"" \
    -I"$tree" -I"$root/capi/include" -fPIC -shared \
    -o "$so.tmp" "$root/fio/nvme_dio_fio.c" \
    "$capi" -Wl,--exclude-libs,ALL -Wl,-z,nodelete \
    -lpthread -ldl -lm
  mv "$so.tmp" "$so"
fi
if [ -n "$with_fio" ]; then
  locked make -s -C "$tree" -j2 fio >"$out/make.log" 2>&1 || {
    echo "fio/build.sh: building fio failed; see $out/make.log" >&2
    exit 1
  }
  cp "$tree/fio" "$out/fio.tmp" && mv "$out/fio.tmp" "$out/fio"
  # fio's t/io_uring (the kernel's best path, for ci/vm-bench), linked statically: the
  # guest's busybox initramfs has no shared libraries beyond the ones fio itself brings.
  iou="t/io_uring.o lib/rand.o lib/pattern.o lib/strntol.o"
  if [ ! -f "$out/t_io_uring" ] || [ "$tree/t/io_uring.c" -nt "$out/t_io_uring" ]; then
    (cd "$tree" && locked make -s $iou >>"$out/make.log" 2>&1 \
      && locked cc -static -o "$out/t_io_uring.tmp" $iou -lpthread -lm) || {
      echo "fio/build.sh: building t/io_uring failed; see $out/make.log" >&2
      exit 1
    }
    mv "$out/t_io_uring.tmp" "$out/t_io_uring"
  fi
fi
echo "$so"

#!/usr/bin/env bash
# Builds the Debian package from a release binary already built, with
# dpkg-deb alone (no cargo-deb to compile first: CI and a Pi owner's laptop
# skip minutes of build):
#
#   cargo build --release && packaging/deb.sh
#   cargo build --release --target aarch64-unknown-linux-gnu &&
#       packaging/deb.sh --target aarch64-unknown-linux-gnu
#
# Writes target/[TRIPLE/]debian/wschat_VERSION_ARCH.deb and prints its path,
# last. Installs /usr/bin/wschat, /usr/lib/systemd/system/wschat.service
# (enabled and started, as Debian's dh_installsystemd does),
# /etc/wschat/wschat.toml (a conffile: upgrades keep the operator's edits)
# and the docs. Depends: the C library version the binary needs, read from
# its ELF version references (readelf, any architecture).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
die() { echo "deb.sh: ERROR: $*" >&2; exit 1; }

triple=""
case "${1:-}" in
--target) triple=${2:?--target needs a triple} ;;
"") ;;
*) die "usage: $0 [--target TRIPLE]" ;;
esac
case "$triple" in
"" | x86_64-unknown-linux-gnu) arch=amd64 ;;
aarch64-unknown-linux-gnu) arch=arm64 ;;
armv7-unknown-linux-gnueabihf) arch=armhf ;;
*) die "no Debian architecture for '$triple' (x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" ;;
esac
command -v dpkg-deb >/dev/null || die "dpkg-deb not found: apt-get install dpkg"
command -v readelf >/dev/null || die "readelf not found: apt-get install binutils"

out="$ROOT/target${triple:+/$triple}"
bin="$out/release/wschat"
[ -x "$bin" ] || die "$bin not built: cargo build --release${triple:+ --target $triple}"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml"

# Depends, from the shared libraries the binary names and the newest glibc
# symbol version it references.
depends=()
glibc=$(readelf -W --version-info "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    case "$lib" in
    libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | ld-linux*) ;;
    libgcc_s.so.1) depends+=("libgcc-s1") ;;
    *) die "$bin needs $lib: no Debian package known for it here" ;;
    esac
done
[ -n "$glibc" ] && depends=("libc6 (>= $glibc)" "${depends[@]}")

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/pkg"
install -D -m 755 "$bin" "$pkg/usr/bin/wschat"
install -D -m 644 packaging/wschat.service "$pkg/usr/lib/systemd/system/wschat.service"
install -D -m 644 packaging/wschat.toml "$pkg/etc/wschat/wschat.toml"
install -D -m 644 README.md "$pkg/usr/share/doc/wschat/README.md"
install -D -m 644 packaging/README.Debian "$pkg/usr/share/doc/wschat/README.Debian"
printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: wschat\n\nFiles: *\nCopyright: wschat developers\n' |
    install -D -m 644 /dev/stdin "$pkg/usr/share/doc/wschat/copyright"
install -d "$pkg/DEBIAN"
(cd "$pkg" && find usr etc -type f -print0 | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
echo /etc/wschat/wschat.toml >"$pkg/DEBIAN/conffiles"
size_kib=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
{
    echo "Package: wschat"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: wschat developers"
    echo "Installed-Size: $size_kib"
    [ ${#depends[@]} -gt 0 ] && (IFS=,; echo "Depends: ${depends[*]}" | sed 's/,/, /g')
    echo "Section: net"
    echo "Priority: optional"
    echo "Description: small real-time chat server with a hand-written RFC 6455 WebSocket engine"
    echo " A small real-time chat server: one binary, one port, the web client built in."
    echo " Runs as the sandboxed systemd service wschat.service on port 8080;"
    echo " see /usr/share/doc/wschat/README.Debian."
} >"$pkg/DEBIAN/control"

# The maintainer scripts dh_installsystemd writes for an enabled, started
# unit: enable on install, (re)start where systemd runs, stop on removal,
# forget on purge. In a container or chroot without systemd the checks of
# /run/systemd/system skip starting, and a missing deb-systemd-helper
# (init-system-helpers) is not an error.
unit=wschat.service
cat >"$pkg/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ] || [ "\$1" = abort-upgrade ] || [ "\$1" = abort-deconfigure ] || [ "\$1" = abort-remove ]; then
	if command -v deb-systemd-helper >/dev/null; then
		deb-systemd-helper unmask '$unit' >/dev/null || true
		if deb-systemd-helper --quiet was-enabled '$unit'; then
			deb-systemd-helper enable '$unit' >/dev/null || true
		else
			deb-systemd-helper update-state '$unit' >/dev/null || true
		fi
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "\$2" ]; then action=restart; else action=start; fi
		deb-systemd-invoke \$action '$unit' >/dev/null || true
	fi
fi
EOF
cat >"$pkg/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
	deb-systemd-invoke stop '$unit' >/dev/null || true
fi
EOF
cat >"$pkg/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if command -v deb-systemd-helper >/dev/null; then
	if [ "\$1" = remove ]; then
		deb-systemd-helper mask '$unit' >/dev/null || true
	fi
	if [ "\$1" = purge ]; then
		deb-systemd-helper purge '$unit' >/dev/null || true
		deb-systemd-helper unmask '$unit' >/dev/null || true
	fi
fi
EOF
chmod 755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

mkdir -p "$out/debian"
deb="$out/debian/wschat_${version}_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"

#!/usr/bin/env bash
# The Debian package and its systemd service, checked where systemd does not
# run (CI, containers):
#
# 1. packaging/deb.sh packs the release binary into the .deb for amd64
#    (PACKAGE_ARCHES="amd64 arm64 armhf" for the Raspberry Pi ones too; their
#    linkers are in .cargo/config.toml). The binaries are built first unless
#    WSCHAT_NO_BUILD=1 (.ci/run has built them for tests/cross.sh).
# 2. `systemd-analyze security --offline=yes` scores packaging/wschat.service
#    at most 2.0 ("OK").
# 3. `dpkg-deb -c`: the binary, the unit and the docs are where they belong.
# 4. The amd64 package installs with dpkg into a clean Debian chroot
#    (debootstrap --variant=minbase, the mirror /etc/apt uses); the installed
#    binary starts there as the unit starts it and answers /healthz.
#    PACKAGE_CHROOT=DIR reuses a chroot made earlier (a fresh one is made when
#    DIR does not exist); PACKAGE_INSTALL=extract checks `dpkg -x` instead.
#    `tests/package.sh chroot` only makes the chroot (.ci/run starts it early:
#    it is downloads, not CPU).
#
# Needs: systemd (for systemd-analyze), dpkg, binutils (readelf),
# debootstrap, curl, root for the chroot. A missing tool is an error.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
read -r -a ARCHES <<<"${PACKAGE_ARCHES:-amd64}"
INSTALL="${PACKAGE_INSTALL:-chroot}"
MAX_EXPOSURE=2.0
PORT=$((20000 + RANDOM % 20000))
failed=()

die() { echo "package.sh: ERROR: $*" >&2; exit 1; }
fail() { echo "package.sh: FAILED: $*" >&2; failed+=("$1"); }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

# `tests/package.sh unit` checks the unit alone (step 2).
MODE="${1:-all}"
case "$MODE" in all | unit | chroot) ;; *) die "usage: $0 [all|unit|chroot]" ;; esac
chroot_dir=${PACKAGE_CHROOT:-$ROOT/target/package-chroot}

# A clean Debian (minbase) to install into, from the mirror /etc/apt uses.
make_chroot() {
    [ -x "$chroot_dir/usr/bin/dpkg" ] && return 0
    need debootstrap "apt-get install debootstrap"
    [ "$(id -u)" = 0 ] || die "making a chroot needs root (or PACKAGE_INSTALL=extract)"
    local mirror t0=$SECONDS
    mirror=$(grep -h -m1 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1)
    [ -n "$mirror" ] || mirror=$(grep -h -m1 '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}')
    [ -n "$mirror" ] || die "no Debian mirror configured in /etc/apt"
    rm -rf "$chroot_dir.tmp"
    mkdir -p "$ROOT/target"
    debootstrap --variant=minbase bookworm "$chroot_dir.tmp" "$mirror" >"$ROOT/target/debootstrap.log" 2>&1 ||
        { tail -20 "$ROOT/target/debootstrap.log"; die "debootstrap failed"; }
    mv "$chroot_dir.tmp" "$chroot_dir"
    echo "debootstrap minbase: $((SECONDS - t0)) s"
}
if [ "$MODE" = chroot ]; then make_chroot; exit; fi
if [ "$MODE" = unit ]; then
    need systemd-analyze "apt-get install systemd"
    report=$(systemd-analyze security --offline=yes packaging/wschat.service 2>&1)
    score=$(sed -n 's/.*Overall exposure level for wschat.service: \([0-9.]*\).*/\1/p' <<<"$report")
    [ -n "$score" ] || { echo "$report"; die "systemd-analyze security gave no score"; }
    awk "BEGIN{exit !($score <= $MAX_EXPOSURE)}" || { grep '✗' <<<"$report"; die "exposure $score, more than $MAX_EXPOSURE"; }
    echo "systemd-analyze security: exposure $score (at most $MAX_EXPOSURE)"
    echo "package: 1 passed, 0 failed"
    exit 0
fi
need systemd-analyze "apt-get install systemd"
need dpkg-deb "apt-get install dpkg"
need readelf "apt-get install binutils"
need curl "apt-get install curl"
case "$INSTALL" in
chroot) need debootstrap "apt-get install debootstrap"
    [ "$(id -u)" = 0 ] || die "installing into a chroot needs root (or PACKAGE_INSTALL=extract)" ;;
extract) ;;
*) die "PACKAGE_INSTALL must be chroot or extract, not '$INSTALL'" ;;
esac

# The cross linkers are in .cargo/config.toml.

# 1. The packages.
declare -A DEBS
for arch in "${ARCHES[@]}"; do
    case "$arch" in
    amd64) target=() ;;
    arm64) target=(--target aarch64-unknown-linux-gnu) ;;
    armhf) target=(--target armv7-unknown-linux-gnueabihf) ;;
    *) die "unknown architecture '$arch' (amd64, arm64, armhf)" ;;
    esac
    if [ -z "${WSCHAT_NO_BUILD:-}" ]; then
        cargo build --quiet --release --locked "${target[@]}" --bin wschat || { fail "cargo build --release $arch"; continue; }
    fi
    # deb.sh prints the path of the .deb it wrote, last.
    out=$(packaging/deb.sh "${target[@]}" 2>&1) || { echo "$out"; fail "packaging/deb.sh $arch"; continue; }
    deb=$(tail -n1 <<<"$out")
    [ -f "$deb" ] || { echo "$out"; fail "deb.sh $arch: no .deb"; continue; }
    echo "$arch: $deb ($(stat -c %s "$deb") B)"
    DEBS[$arch]=$deb
done

# 2. The unit, offline.
unit=packaging/wschat.service
report=$(systemd-analyze security --offline=yes "$unit" 2>&1)
score=$(sed -n 's/.*Overall exposure level for wschat.service: \([0-9.]*\).*/\1/p' <<<"$report")
if [ -z "$score" ]; then
    echo "$report"
    fail "systemd-analyze security gave no score"
elif awk "BEGIN{exit !($score <= $MAX_EXPOSURE)}"; then
    echo "systemd-analyze security: exposure $score (at most $MAX_EXPOSURE)"
else
    grep '✗' <<<"$report"
    fail "systemd-analyze security: exposure $score, more than $MAX_EXPOSURE"
fi

# 3. The contents.
for arch in "${!DEBS[@]}"; do
    list=$(dpkg-deb -c "${DEBS[$arch]}")
    for f in ./usr/bin/wschat ./usr/share/doc/wschat/README.Debian ./usr/share/doc/wschat/README.md ./etc/wschat/wschat.toml; do
        grep -q " $f\$" <<<"$list" || { echo "$list"; fail "$arch: $f not in the package"; }
    done
    # Under /usr/lib (merged /usr), where Debian 12 and later put units.
    grep -qE " \./(usr/)?lib/systemd/system/wschat\.service\$" <<<"$list" ||
        { echo "$list"; fail "$arch: wschat.service not in the package"; }
    dpkg-deb --ctrl-tarfile "${DEBS[$arch]}" | tar -xO ./conffiles 2>/dev/null | grep -qx /etc/wschat/wschat.toml ||
        fail "$arch: /etc/wschat/wschat.toml is not a conffile"
    want_arch=$(dpkg-deb -f "${DEBS[$arch]}" Architecture)
    [ "$want_arch" = "$arch" ] || fail "$arch: the package says Architecture: $want_arch"
done

# 4. Installed, it runs and answers.
deb=${DEBS[amd64]:-}
if [ -z "$deb" ]; then
    [ ${#failed[@]} -gt 0 ] || echo "no amd64 package to install (PACKAGE_ARCHES=${ARCHES[*]})"
elif [ "$INSTALL" = chroot ]; then
    make_chroot
    cp "$deb" "$chroot_dir/tmp/wschat.deb"
    if chroot "$chroot_dir" dpkg -i /tmp/wschat.deb; then
        # As the unit runs it: in its working directory, a non-root user.
        mkdir -p "$chroot_dir/var/lib/wschat"
        chown 65534:65534 "$chroot_dir/var/lib/wschat"
        chroot --userspec=65534:65534 "$chroot_dir" sh -c \
            "cd /var/lib/wschat && exec /usr/bin/wschat --config /etc/wschat/wschat.toml --addr 127.0.0.1:$PORT" \
            >"$ROOT/target/package-run.log" 2>&1 &
        pid=$!
    else
        fail "dpkg -i in a clean chroot"
    fi
else
    xdir=$(mktemp -d)
    dpkg-deb -x "$deb" "$xdir"
    "$xdir/usr/bin/wschat" --config "$xdir/etc/wschat/wschat.toml" --addr "127.0.0.1:$PORT" --data-dir "$xdir/data" >"$ROOT/target/package-run.log" 2>&1 &
    pid=$!
fi
if [ -n "${pid:-}" ]; then
    ok=1
    for _ in $(seq 100); do
        if curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then ok=0; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    rc=$?
    if [ $ok -ne 0 ]; then cat "$ROOT/target/package-run.log"; fail "the installed wschat did not answer /healthz"; fi
    if [ $rc -ne 0 ]; then cat "$ROOT/target/package-run.log"; fail "the installed wschat exited $rc after SIGTERM"; fi
    [ $ok -eq 0 ] && [ $rc -eq 0 ] && echo "installed ($INSTALL): /usr/bin/wschat answered /healthz and stopped on SIGTERM"
fi
[ "$INSTALL" = chroot ] && [ -x "$chroot_dir/usr/bin/dpkg" ] && chroot "$chroot_dir" dpkg --purge wschat >/dev/null 2>&1
[ -n "${xdir:-}" ] && rm -rf "$xdir"

if [ ${#failed[@]} -gt 0 ]; then
    printf 'package: FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "package: all passed"

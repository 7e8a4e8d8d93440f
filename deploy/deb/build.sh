#!/usr/bin/env bash
# Builds the Debian package of the Introgy backend from a built binary:
#
#   cargo build --release
#   deploy/deb/build.sh --binary target/release/introgy --out dist
#   sudo apt install ./dist/introgy_<version>_<arch>.deb      (or dpkg -i)
#
# Contents: /usr/bin/introgy (stripped), /lib/systemd/system/introgy.service, the nginx
# site (sites-available, not enabled), its snippet and upstream files (conffiles), and
# /usr/share/introgy/introgy.env.template. The maintainer scripts (deploy/deb/) create
# the `introgy` system user, /var/lib/introgy and /etc/introgy/introgy.env with a fresh
# JWT secret; the service is not started until its settings pass `introgy check`
# (docs/deploy.md). dpkg-deb only: no cargo-deb to compile. The project's tests build the
# package from the debug binary (`--compress gzip`); releases use the release binary and
# the default xz.
set -euo pipefail

die() { echo "deb/build.sh: $*" >&2; exit 2; }
binary=""
out="."
compress="xz"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:-}"; shift 2 ;;
    --out) out="${2:-}"; shift 2 ;;
    --compress) compress="${2:-}"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
[ -n "$binary" ] && [ -x "$binary" ] || die "--binary PATH to a built introgy binary is required"
case "$compress" in xz|gzip|zstd|none) ;; *) die "--compress must be xz, gzip, zstd or none" ;; esac
command -v dpkg-deb >/dev/null || die "dpkg-deb is required (Debian/Ubuntu: it is part of dpkg)"

here="$(cd "$(dirname "$0")" && pwd)"
deploy="$(dirname "$here")"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$deploy/../Cargo.toml" | head -n 1)
[ -n "$version" ] || die "cannot read the version from Cargo.toml"
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT
install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
  "$stage/etc/nginx/sites-available" "$stage/etc/nginx/snippets" "$stage/etc/nginx/conf.d" \
  "$stage/usr/share/introgy" "$stage/usr/share/doc/introgy"
install -m 0755 "$binary" "$stage/usr/bin/introgy"
# Debug info is most of a binary's size; Debian ships binaries stripped.
if command -v strip >/dev/null; then strip --strip-unneeded "$stage/usr/bin/introgy"; fi
sed 's#^ExecStart=/usr/local/bin/introgy#ExecStart=/usr/bin/introgy#' \
  "$deploy/introgy.service" > "$stage/lib/systemd/system/introgy.service"
grep -q '^ExecStart=/usr/bin/introgy serve$' "$stage/lib/systemd/system/introgy.service" \
  || die "the unit's ExecStart line was not rewritten"
sed -e 's/@SERVER_NAME@/_/' -e 's/@DEFAULT_SERVER@//' \
  "$deploy/nginx/introgy-site.conf" > "$stage/etc/nginx/sites-available/introgy.conf"
install -m 0644 "$deploy/nginx/introgy-proxy.conf" "$stage/etc/nginx/snippets/introgy-proxy.conf"
sed 's/@PORT@/8000/' "$deploy/nginx/introgy-upstream.conf" > "$stage/etc/nginx/conf.d/introgy-upstream.conf"
install -m 0644 "$deploy/introgy.env.template" "$stage/usr/share/introgy/introgy.env.template"
printf 'Introgy backend\nLicense: MIT\n' > "$stage/usr/share/doc/introgy/copyright"
chmod 0644 "$stage"/lib/systemd/system/* "$stage"/etc/nginx/*/* "$stage"/usr/share/doc/introgy/*

for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
cat > "$stage/DEBIAN/conffiles" <<CONF
/etc/nginx/conf.d/introgy-upstream.conf
/etc/nginx/sites-available/introgy.conf
/etc/nginx/snippets/introgy-proxy.conf
CONF
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
# The newest glibc symbol version the binary needs is the libc6 it depends on.
libc="libc6"
if command -v objdump >/dev/null; then
  glibc=$(objdump -T "$stage/usr/bin/introgy" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  [ -n "$glibc" ] && libc="libc6 (>= $glibc)"
fi
cat > "$stage/DEBIAN/control" <<CONTROL
Package: introgy
Version: $version
Architecture: $arch
Maintainer: Introgy <dev@introgy.ai>
Installed-Size: $size
Depends: $libc, passwd
Recommends: nginx
Suggests: certbot, python3-certbot-nginx
Section: web
Priority: optional
Homepage: https://introgy.ai
Description: Introgy backend: accounts, profiles and the social battery
 The HTTP/JSON backend of Introgy, the introvert's social battery manager, with a
 hardened systemd unit and an nginx site. Settings: /etc/introgy/introgy.env.
CONTROL

mkdir -p "$out"
deb="$out/introgy_${version}_${arch}.deb"
level=()
[ "$compress" = gzip ] && level=(-z1)  # fast: the tests package a large debug binary
dpkg-deb --root-owner-group -Z"$compress" "${level[@]}" --build "$stage" "$deb" >/dev/null
echo "$deb"

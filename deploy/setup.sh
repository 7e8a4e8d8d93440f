#!/usr/bin/env bash
# Installs or updates the Introgy backend on a Debian/Ubuntu host (EC2 or any other):
# a system user, /etc/introgy/introgy.env (a JWT secret is generated once and never
# replaced), the binary, the hardened systemd unit and the nginx site. Idempotent:
# running it again changes only what changed.
#
#   sudo deploy/setup.sh --binary target/release/introgy --server-name api.introgy.app
#
# DESTDIR=/some/dir installs into that folder instead of / and skips user creation,
# systemctl and nginx reloads (for packaging and for the project's tests).
set -euo pipefail

binary=""
server_name="_"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --server-name) server_name="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
  echo "setup.sh: --binary PATH to a built introgy binary is required (cargo build --release)" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
root="${DESTDIR:-}"
live=true
[ -n "$root" ] && live=false

changed=()
# install_file SRC DEST MODE: copy only when the content differs.
install_file() {
  local src="$1" dest="$root$2" mode="$3"
  mkdir -p "$(dirname "$dest")"
  if [ ! -f "$dest" ] || ! cmp -s "$src" "$dest"; then
    install -m "$mode" "$src" "$dest"
    changed+=("$2")
  fi
}

if $live && ! id introgy >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/introgy --shell /usr/sbin/nologin introgy
  changed+=("user introgy")
fi
mkdir -p "$root/var/lib/introgy" "$root/etc/introgy"
$live && chown introgy:introgy /var/lib/introgy && chmod 0700 /var/lib/introgy

env_file="$root/etc/introgy/introgy.env"
if [ ! -f "$env_file" ]; then
  secret=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')
  umask 077
  cat > "$env_file" <<ENV
# Introgy settings; see \`introgy serve --help\` for every variable.
ENVIRONMENT=production
HOST=127.0.0.1
PORT=8000
DATABASE_URL=sqlite:/var/lib/introgy/introgy.db
JWT_SECRET_KEY=$secret
TRUSTED_PROXIES=127.0.0.1/32,::1/128
FRONTEND_URL=https://introgy.ai
FROM_EMAIL=support@introgy.ai
# Mail: set SENDGRID_API_KEY, or SMTP_HOST/SMTP_PORT/SMTP_USER/SMTP_PASSWORD.
# MongoDB instead of SQLite: DATABASE_URL=mongodb+srv://...
LOG_FORMAT=json
ENV
  changed+=("/etc/introgy/introgy.env (new JWT secret)")
fi
chmod 0600 "$env_file"
$live && chown root:introgy "$env_file" && chmod 0640 "$env_file"

install_file "$binary" /usr/local/bin/introgy 0755
install_file "$here/introgy.service" /etc/systemd/system/introgy.service 0644
site=$(mktemp)
trap 'rm -f "$site"' EXIT
sed "s/SERVER_NAME/$server_name/" "$here/nginx/introgy.conf" > "$site"
install_file "$site" /etc/nginx/sites-available/introgy.conf 0644
if [ ! -L "$root/etc/nginx/sites-enabled/introgy.conf" ]; then
  mkdir -p "$root/etc/nginx/sites-enabled"
  ln -s /etc/nginx/sites-available/introgy.conf "$root/etc/nginx/sites-enabled/introgy.conf"
  changed+=("/etc/nginx/sites-enabled/introgy.conf")
fi

if $live; then
  systemctl daemon-reload
  systemctl enable introgy.service >/dev/null
  if [ ${#changed[@]} -gt 0 ]; then systemctl restart introgy.service; fi
  nginx -t && systemctl reload nginx
  /usr/local/bin/introgy smoke "http://127.0.0.1:8000" || echo "setup.sh: smoke test failed; see journalctl -u introgy" >&2
fi

if [ ${#changed[@]} -eq 0 ]; then
  echo "nothing changed"
else
  printf 'changed: %s\n' "${changed[@]}"
fi

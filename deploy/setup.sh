#!/usr/bin/env bash
# Installs or updates the Introgy backend on a Debian/Ubuntu host (EC2 or any other)
# built from source: the `introgy` system user, /etc/introgy/introgy.env (a JWT secret is
# generated once and never replaced), the binary, the hardened systemd unit and the nginx
# site. Safe to re-run (an upgrade is a re-run): it changes only what changed, keeps what
# certbot added to the site, and starts or restarts the service only when
# `introgy check` passes, then smoke-tests it through nginx.
#
#   sudo deploy/setup.sh --binary target/release/introgy --server-name api.introgy.app
#
# Without --server-name the site answers every host name: it becomes nginx's default
# server, and the distribution's stock `default` site is disabled (said loudly).
#
# DESTDIR=/some/dir installs the files into that folder instead of / and skips the user,
# systemctl, nginx and the smoke test (for packaging and for the project's tests).
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "setup.sh: $*" >&2; exit 2; }

binary=""
server_name="_"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary="$2"; shift 2 ;;
    --server-name) [ $# -ge 2 ] || die "--server-name needs a name"; server_name="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$binary" ] && [ -x "$binary" ] || die "--binary PATH to a built introgy binary is required (cargo build --release)"
case "$server_name" in
  *[!A-Za-z0-9._*-]*) die "--server-name must be a host name (got '$server_name')" ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
root="${DESTDIR:-}"
live=true
[ -n "$root" ] && live=false

if $live; then
  # Preflight: nothing is changed unless everything setup needs is there.
  command -v nginx >/dev/null 2>&1 || die "nginx is not installed: sudo apt-get install nginx"
  [ "$(id -u)" -eq 0 ] || die "run as root (sudo deploy/setup.sh ...)"
  command -v systemctl >/dev/null 2>&1 || die "systemd (systemctl) is required"
fi

changed=()
kept=()
# install_file SRC DEST MODE: copy only when the content differs.
install_file() {
  local src="$1" dest="$root$2" mode="$3"
  install -d -m 0755 "$(dirname "$dest")"
  if [ ! -f "$dest" ] || ! cmp -s "$src" "$dest"; then
    install -m "$mode" "$src" "$dest"
    changed+=("$2")
  fi
}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# --- user, folders, settings -------------------------------------------------------
if $live && ! id introgy >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/introgy --shell /usr/sbin/nologin introgy
  changed+=("user introgy")
fi
install -d -m 0755 "$root/etc/introgy"
install -d -m 0700 "$root/var/lib/introgy"
$live && chown introgy:introgy /var/lib/introgy

env_file="$root/etc/introgy/introgy.env"
if [ ! -f "$env_file" ]; then
  secret=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')
  # Only the new file is private; the umask does not leak into the rest of the script.
  (
    umask 077
    sed "s/@JWT_SECRET_KEY@/$secret/" "$here/introgy.env.template" > "$env_file"
  )
  changed+=("/etc/introgy/introgy.env (new JWT secret)")
fi
if $live; then
  chown root:introgy "$env_file"
  chmod 0640 "$env_file"
fi
# The backend port nginx proxies to follows the settings file.
port=$(sed -n 's/^[[:space:]]*PORT=["'\'']\{0,1\}\([0-9]\{1,5\}\).*/\1/p' "$env_file" | tail -n 1)
port="${port:-8000}"

# --- binary and unit ---------------------------------------------------------------
install_file "$binary" /usr/local/bin/introgy 0755
install_file "$here/introgy.service" /etc/systemd/system/introgy.service 0644
# Anything so far (user, settings, binary, unit) means the service must restart.
service_changes=${#changed[@]}

# --- nginx -------------------------------------------------------------------------
sed "s/@PORT@/$port/" "$here/nginx/introgy-upstream.conf" > "$scratch/upstream.conf"
install_file "$scratch/upstream.conf" /etc/nginx/conf.d/introgy-upstream.conf 0644
install_file "$here/nginx/introgy-proxy.conf" /etc/nginx/snippets/introgy-proxy.conf 0644

default_server=""
[ "$server_name" = "_" ] && default_server=" default_server"
sed -e "s/@SERVER_NAME@/$server_name/" -e "s/@DEFAULT_SERVER@/$default_server/" \
  "$here/nginx/introgy-site.conf" > "$scratch/site.conf"
# The last line records what setup wrote; a site that no longer matches it was changed
# by someone else (certbot) and is kept.
printf '# introgy-setup sha256:%s\n' "$(sha256sum < "$scratch/site.conf" | cut -d' ' -f1)" >> "$scratch/site.conf"
site=/etc/nginx/sites-available/introgy.conf
if [ -f "$root$site" ]; then
  recorded=$(tail -n 1 "$root$site" | sed -n 's/^# introgy-setup sha256:\([0-9a-f]\{64\}\)$/\1/p')
  actual=$(head -n -1 "$root$site" | sha256sum | cut -d' ' -f1)
  if [ -n "$recorded" ] && [ "$recorded" = "$actual" ]; then
    install_file "$scratch/site.conf" "$site" 0644
  else
    kept+=("$site (changed since setup wrote it, e.g. by certbot; not rewritten)")
    if ! grep -q "server_name[[:space:]].*$server_name" "$root$site"; then
      echo "setup.sh: note: the kept $site does not name '$server_name'; edit its server_name yourself" >&2
    fi
  fi
else
  install_file "$scratch/site.conf" "$site" 0644
fi
if [ ! -L "$root/etc/nginx/sites-enabled/introgy.conf" ]; then
  install -d -m 0755 "$root/etc/nginx/sites-enabled"
  ln -s ../sites-available/introgy.conf "$root/etc/nginx/sites-enabled/introgy.conf"
  changed+=("/etc/nginx/sites-enabled/introgy.conf")
fi
# A catch-all Introgy site must be the default server; Debian's and Ubuntu's stock
# `default` site claims that too (and would answer /docs and /health with its 404).
if [ "$server_name" = "_" ] && { [ -e "$root/etc/nginx/sites-enabled/default" ] || [ -L "$root/etc/nginx/sites-enabled/default" ]; }; then
  rm -f "$root/etc/nginx/sites-enabled/default"
  changed+=("/etc/nginx/sites-enabled/default removed")
  {
    echo "setup.sh: DISABLED the stock nginx site /etc/nginx/sites-enabled/default: the"
    echo "          Introgy site answers every host name (no --server-name). To bring it back:"
    echo "          sudo ln -s /etc/nginx/sites-available/default /etc/nginx/sites-enabled/default"
    echo "          and re-run setup with --server-name YOUR.HOST.NAME"
  } >&2
fi

report() {
  if [ ${#changed[@]} -eq 0 ]; then
    echo "nothing changed"
  else
    printf 'changed: %s\n' "${changed[@]}"
  fi
  if [ ${#kept[@]} -gt 0 ]; then
    printf 'kept: %s\n' "${kept[@]}"
  fi
}

if ! $live; then
  report
  exit 0
fi

# --- service -----------------------------------------------------------------------
systemctl daemon-reload
systemctl enable introgy.service >/dev/null 2>&1
report
# Only checked here; nothing goes live (service or site) before the settings pass.
nginx -t || die "nginx -t fails with these files (above); nothing was reloaded"

# The database is created only here (production `serve` refuses to start without one, so
# a lost database is never silently replaced); on a re-run this changes nothing.
runuser -u introgy -- /usr/local/bin/introgy init --env-file /etc/introgy/introgy.env ||
  die "introgy init could not create or open the database (above); nothing was started"

check() {
  runuser -u introgy -- /usr/local/bin/introgy check --env-file /etc/introgy/introgy.env
}
if ! check_output=$(check 2>&1); then
  echo "$check_output"
  cat >&2 <<NEXT

setup.sh: the service was NOT started and nginx NOT reloaded: the settings do not pass
\`introgy check\` (above).
Next step: complete /etc/introgy/introgy.env (mail: SENDGRID_API_KEY, or SMTP_HOST,
SMTP_PORT, SMTP_USER, SMTP_PASSWORD), then run setup again:
  sudoedit /etc/introgy/introgy.env
  sudo -u introgy /usr/local/bin/introgy check --env-file /etc/introgy/introgy.env
  sudo $0 --binary $binary --server-name $server_name
NEXT
  if systemctl is-active --quiet introgy.service; then
    echo "setup.sh: the running service was left as it was (still the previous binary and settings)." >&2
  fi
  exit 3
fi

if [ "$service_changes" -gt 0 ] || ! systemctl is-active --quiet introgy.service; then
  systemctl restart introgy.service
  echo "started introgy.service"
fi
systemctl reload nginx || systemctl start nginx

# Through nginx, as clients come: a site that loses to another server fails here.
if [ "$server_name" = "_" ]; then
  smoke_url="http://127.0.0.1"
  smoke_args=()
else
  smoke_url="http://$server_name"
  smoke_args=(--connect-to 127.0.0.1)
fi
if ! runuser -u introgy -- /usr/local/bin/introgy smoke "$smoke_url" "${smoke_args[@]}" \
    --wait-seconds 30 --env-file /etc/introgy/introgy.env; then
  echo "setup.sh: the smoke test through nginx failed; see journalctl -u introgy -n 50 and /var/log/nginx/introgy.error.log" >&2
  exit 1
fi

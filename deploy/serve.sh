#!/usr/bin/env bash
# Production: gunicorn on loopback behind nginx, which buffers slow clients. Stops both when either stops.
#   GUITARS_PUBLIC_BIND (default 0.0.0.0:8080): where nginx listens
#   GUITARS_BIND (default 127.0.0.1:8000): where gunicorn listens, reached only through nginx
#   GUITARS_NGINX_DIR (default: a new temporary folder): nginx's rendered config, pid and buffers
#   GUITARS_WORKER_MEMORY_MB (default 2048): address space each gunicorn worker may add once its model is loaded
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
public="${GUITARS_PUBLIC_BIND:-0.0.0.0:8080}"
export GUITARS_BIND="${GUITARS_BIND:-127.0.0.1:8000}"
export GUITARS_PROXY_HOPS=1
export GUITARS_WORKER_MEMORY_MB="${GUITARS_WORKER_MEMORY_MB:-2048}"  # the app takes the client's address from nginx's X-Forwarded-For
max_body_mb=$(( ${GUITARS_MAX_UPLOAD_MB:-20} + 5 ))
rundir="${GUITARS_NGINX_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/guitars-nginx.XXXXXX")}"
mkdir -p "$rundir"
chmod 755 "$rundir"  # nginx's workers (nobody, when started as root) create their buffers inside
sed -e "s|@RUNDIR@|$rundir|g" -e "s|@LISTEN@|$public|g" -e "s|@UPSTREAM@|$GUITARS_BIND|g" \
    -e "s|@MAX_BODY@|${max_body_mb}m|g" "$here/nginx.conf" > "$rundir/nginx.conf"
nginx -q -t -p "$rundir" -c "$rundir/nginx.conf"

gunicorn="${GUNICORN:-$root/.venv/bin/gunicorn}"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$gunicorn" -c "$root/gunicorn.conf.py" wsgi:app &
app=$!
nginx -p "$rundir" -c "$rundir/nginx.conf" -g "daemon off;" &
proxy=$!
trap 'kill -TERM $app $proxy 2>/dev/null || true; wait' EXIT INT TERM
echo "serving on http://$public (nginx) -> http://$GUITARS_BIND (gunicorn)"
wait -n $app $proxy

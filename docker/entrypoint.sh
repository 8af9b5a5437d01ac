#!/bin/sh
# Container entrypoint: run bulkhead in the foreground (PID 1 after exec, so SIGTERM drains it) with the config
# at $BULKHEAD_CONFIG (default /etc/bulkhead/bulkhead.yaml). Arguments starting with "-" are passed to
# bulkhead (e.g. "--check"); any other command is run instead (e.g. "sh" for a look inside).
set -e
CONFIG=${BULKHEAD_CONFIG:-/etc/bulkhead/bulkhead.yaml}
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
  [ -r "$CONFIG" ] || { echo "entrypoint: no readable config at $CONFIG" >&2; exit 2; }
  exec /usr/local/bin/bulkhead -c "$CONFIG" "$@"
fi
exec "$@"

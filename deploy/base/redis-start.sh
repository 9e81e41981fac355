#!/bin/sh
# Redis in pod redis-K: the primary the sentinels name, else redis-0 on a first start. A
# restarted former primary asks the sentinels first, so it rejoins as a replica.
set -eu
ME="$(hostname).redis"
PRIMARY=""
for s in redis-0.redis redis-1.redis redis-2.redis; do
  PRIMARY=$(redis-cli -h "$s" -p 26379 --raw sentinel get-master-addr-by-name actionmesh 2>/dev/null | head -n 1) || true
  [ -n "$PRIMARY" ] && break
done
if [ -z "$PRIMARY" ] && [ "$(hostname)" != "redis-0" ]; then
  PRIMARY=redis-0.redis
fi
# With AUTH (the mtls component mounts the password): in a config file, never on the command line.
CONF=/tmp/redis-auth.conf
: > "$CONF"
if [ -s /etc/redis-auth/redis-password ]; then
  PASSWORD=$(head -n 1 /etc/redis-auth/redis-password)
  printf 'requirepass "%s"\nmasterauth "%s"\n' "$PASSWORD" "$PASSWORD" > "$CONF"
fi
set -- "$CONF" --appendonly yes --appendfsync everysec --dir /data --replica-announce-ip "$ME"
if [ -n "$PRIMARY" ] && [ "$PRIMARY" != "$ME" ]; then
  exec redis-server "$@" --replicaof "$PRIMARY" 6379
fi
exec redis-server "$@"

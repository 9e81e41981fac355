#!/bin/sh
# Sentinel beside each Redis: monitors the service `actionmesh` (the name in the coordinator's
# redis+sentinel:// URL) by host name, quorum 2 of 3.
set -eu
ME="$(hostname).redis"
PRIMARY=""
for s in redis-0.redis redis-1.redis redis-2.redis; do
  PRIMARY=$(redis-cli -h "$s" -p 26379 --raw sentinel get-master-addr-by-name actionmesh 2>/dev/null | head -n 1) || true
  [ -n "$PRIMARY" ] && break
done
[ -n "$PRIMARY" ] || PRIMARY=redis-0.redis
cat > /tmp/sentinel.conf <<EOF
port 26379
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $ME
sentinel monitor actionmesh $PRIMARY 6379 2
sentinel down-after-milliseconds actionmesh 2000
sentinel failover-timeout actionmesh 10000
sentinel parallel-syncs actionmesh 1
EOF
if [ -s /etc/redis-auth/redis-password ]; then
  printf 'sentinel auth-pass actionmesh "%s"\n' "$(head -n 1 /etc/redis-auth/redis-password)" >> /tmp/sentinel.conf
fi
exec redis-server /tmp/sentinel.conf --sentinel

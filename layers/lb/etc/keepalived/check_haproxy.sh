#!/bin/sh
# keepalived track script: the VIP may stay only where haproxy runs.
exec kill -0 "$(cat /run/haproxy.pid 2>/dev/null || echo 0)" 2>/dev/null || pidof haproxy >/dev/null

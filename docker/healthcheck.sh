#!/bin/bash
# Container healthcheck: GET /healthz on the admin listener answers 200 (bash's /dev/tcp: the slim image has
# no curl). Port: $BULKHEAD_ADMIN_PORT, default 9901 (conf/examples/docker.yaml). Used by the image's
# HEALTHCHECK and by docker/compose.yaml; exit 0 healthy, 1 not.
port=${BULKHEAD_ADMIN_PORT:-9901}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 2 _ status _ <&3 || exit 1
[ "$status" = 200 ]

#!/bin/sh
# Runs the command and, however it ends (done, failed, `docker stop`), cleans up after it before the container
# exits: a TERM or INT is passed on to the command, Ray processes this container started are stopped, and
# `forager gc` removes the episode containers that processes of this container started and left (their owner
# label names this container's hostname and a process that is gone), so `docker-compose down` leaks nothing.
if [ -S /var/run/docker.sock ] && [ -z "${FORAGER_CONTAINER_NAME:-}" ]; then
    # The lock of an output directory names its holder by this (`docker ps` shows it; the hostname is the id).
    FORAGER_CONTAINER_NAME=$(python3 -c 'import docker, socket
try:
    print(docker.from_env(timeout=5).containers.get(socket.gethostname()).name)
except Exception:
    pass' 2>/dev/null)
    export FORAGER_CONTAINER_NAME
fi
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
status=0
wait "$child" || status=$?
while kill -0 "$child" 2>/dev/null; do  # a trapped signal ends `wait` early: wait for the command itself
    status=0
    wait "$child" || status=$?
done
if [ -d /tmp/ray/session_latest ] && command -v ray >/dev/null; then
    ray stop --grace-period 10 >/dev/null 2>&1 || true
fi
if [ -S /var/run/docker.sock ]; then
    forager gc >/dev/null 2>&1 || echo "forager-entrypoint: forager gc failed; run \`forager gc --all\` on the host" >&2
fi
exit "$status"

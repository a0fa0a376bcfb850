#!/bin/sh
# The image's entrypoint. Started as root (as fly.io and most runtimes do),
# it makes the data volume the atticd user's (a fresh volume is root's) and
# runs the command as atticd; started as any other user, it runs the command
# as that user.
set -eu
# The database holds every cache's signing key: files for atticd alone.
umask 0077
if [ "$(id -u)" = 0 ]; then
    if [ "$(stat -c %U /data)" != atticd ]; then
        chown atticd:atticd /data
    fi
    chmod 0700 /data
    exec setpriv --reuid=atticd --regid=atticd --init-groups --inh-caps=-all -- "$@"
fi
exec "$@"

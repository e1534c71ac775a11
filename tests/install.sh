#!/usr/bin/env bash
# Installs Debian packages for the tests' private peers without starting the packages' own
# services (a policy-rc.d that refuses every start, present only while apt runs; an operator's
# own policy-rc.d is left alone). Output goes to stderr, so the start scripts' stdout stays the
# export lines they print.
#
#   bash tests/install.sh PACKAGE...
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.maildistiller
chmod +x /usr/sbin/policy-rc.d.maildistiller
[ -e /usr/sbin/policy-rc.d ] || ln -s /usr/sbin/policy-rc.d.maildistiller /usr/sbin/policy-rc.d
cleanup() {
    if [ "$(readlink /usr/sbin/policy-rc.d 2>/dev/null)" = /usr/sbin/policy-rc.d.maildistiller ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    rm -f /usr/sbin/policy-rc.d.maildistiller
}
trap cleanup EXIT
apt-get install -y -qq --no-install-recommends "$@" >&2

#!/usr/bin/env bash
# Builds the .deb, lists its contents, checks what must be in it, and runs
# `maildistiller check` from the installed paths inside a scratch root (chroot with the
# binary's shared libraries), proving the package works without the source tree.
#   bash packaging/check-deb.sh            # uses `cargo deb --profile dev` (fast, CI)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
deb=$(cargo deb --profile "${PROFILE:-dev}" 2>&1 | tail -1)
[ -f "$deb" ] || { echo "cargo deb did not produce a package: $deb" >&2; exit 1; }
echo "== $deb"
dpkg -c "$deb" > /tmp/md-deb-contents.txt
for want in ./usr/bin/maildistiller ./lib/systemd/system/maildistiller-edge.service \
    ./lib/systemd/system/maildistiller-edge.socket ./lib/systemd/system/maildistiller-engine.service \
    ./lib/systemd/system/maildistiller-dns.service ./usr/lib/sysusers.d/maildistiller.conf \
    ./etc/maildistiller/edge.toml ./etc/maildistiller/engine.toml ./etc/maildistiller/dns.toml \
    ./etc/maildistiller/fleet.example.toml ./usr/share/maildistiller/geo-whois-asn-country.mmdb; do
    grep -q " $want\$" /tmp/md-deb-contents.txt || { echo "missing from the package: $want" >&2; exit 1; }
done
dpkg-deb -I "$deb" | grep -E "Package|Version|Depends|Section"
dpkg-deb -e "$deb" /tmp/md-deb-control.$$ && grep -q "adduser" /tmp/md-deb-control.$$/postinst
rm -rf /tmp/md-deb-control.$$
root=$(mktemp -d /tmp/md-deb-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
dpkg -x "$deb" "$root"
for lib in $(ldd "$root/usr/bin/maildistiller" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
for role in edge engine dns; do
    chroot "$root" /usr/bin/maildistiller check --config "/etc/maildistiller/$role.toml" --role "$role" > /tmp/md-deb-check.txt
    grep -q "geo: /usr/share/maildistiller/geo-whois-asn-country.mmdb" /tmp/md-deb-check.txt \
        || { cat /tmp/md-deb-check.txt; echo "installed check did not use the installed geo database" >&2; exit 1; }
    echo "installed: maildistiller check --config /etc/maildistiller/$role.toml: OK"
done

#!/usr/bin/env bash
# verify.sh: check the systemd units in this folder with `systemd-analyze verify`, and the
# sysusers file with `systemd-sysusers --dry-run`. Exits non-zero on any error *or warning*,
# because systemd-analyze exits 0 on warnings such as an unknown or misspelt directive.
#
# Usage: systemd/verify.sh [PATH-TO-maildistiller-BINARY]
#   e.g. systemd/verify.sh target/debug/maildistiller
#
# `systemd-analyze verify` checks that each Exec*= binary exists and is executable. The
# units name /usr/bin/maildistiller, so they are verified as copies in a temp dir with
# ExecStart= rewritten to the given binary. Without an argument, /usr/bin/maildistiller is
# used if it is installed, otherwise a stub (a copy of /bin/true). The temp dir is removed
# on exit. This works as root or not, and without systemd running as PID 1 (e.g. in a
# container); it only needs the systemd package (systemd-analyze, systemd-sysusers).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
installed=/usr/bin/maildistiller

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify.sh: systemd-analyze not found (apt-get install systemd)" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/maildistiller-verify.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if [[ $# -gt 1 ]]; then
    echo "usage: $0 [path-to-maildistiller-binary]" >&2
    exit 2
elif [[ $# -eq 1 ]]; then
    bin=$(realpath -e -- "$1") || { echo "verify.sh: $1: no such file" >&2; exit 2; }
    [[ -f $bin && -x $bin ]] || { echo "verify.sh: $bin is not an executable file" >&2; exit 2; }
elif [[ -x $installed ]]; then
    bin=$installed
else
    bin=$tmp/bin/maildistiller
    mkdir -p "$tmp/bin"
    cp /bin/true "$bin"
    echo "verify.sh: no binary given and $installed not installed; using a stub for ExecStart="
fi
# The path goes unquoted into ExecStart= and into a sed replacement: refuse whitespace,
# systemd specifiers/variables, quotes and sed-special characters.
bad_chars='[[:space:]%$\\"#&|'"'"']'
if [[ $bin =~ $bad_chars ]]; then
    echo "verify.sh: binary path '$bin' has characters ExecStart= would misread; copy it elsewhere" >&2
    exit 2
fi

units=()
shopt -s nullglob
for f in "$here"/*.service "$here"/*.socket "$here"/*.target "$here"/*.timer; do
    units+=("$(basename "$f")")
done
shopt -u nullglob
if [[ ${#units[@]} -eq 0 ]]; then
    echo "verify.sh: no units found in $here" >&2
    exit 2
fi

status=0
mkdir -p "$tmp/units"
for u in "${units[@]}"; do
    # Rewrite /usr/bin/maildistiller as the command of any Exec*= line (after its prefixes).
    sed -E "s#^(Exec[A-Za-z]*=[-@:+!]*)$installed([[:space:]]|\$)#\1$bin\2#" \
        "$here/$u" >"$tmp/units/$u"
    if [[ $u == *.service ]] && ! grep -q "^ExecStart=$bin " "$tmp/units/$u"; then
        echo "$u: ExecStart= does not start with $installed (nothing to rewrite)"
        status=1
    fi
done

# systemd-analyze verify adds the directory of the given files to the unit search path, so
# the socket finds its service. --man=no: do not require man pages for Documentation=.
# --recursive-errors=no: report only our units, not problems in the host's own units
# that ours pull in (network-online.target etc.).
echo "== systemd-analyze verify ${units[*]}"
set +e
out=$(cd "$tmp/units" && systemd-analyze verify --man=no --recursive-errors=no "${units[@]/#/./}" 2>&1)
rc=$?
set -e
if [[ -n $out ]]; then
    # Show the original file names, not the temp copies.
    printf '%s\n' "$out" | sed "s|$tmp/units/|$here/|g"
fi
if [[ $rc -ne 0 || -n $out ]]; then
    echo "FAIL: systemd-analyze verify (exit $rc, $(printf '%s' "$out" | grep -c '') line(s) of warnings/errors)"
    status=1
else
    echo "ok: ${#units[@]} units"
fi

# sysusers: dry run against an empty root, so the host's users are not touched.
shopt -s nullglob
sysusers=("$here"/*.sysusers.conf)
shopt -u nullglob
if [[ ${#sysusers[@]} -gt 0 ]]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        echo "== systemd-sysusers --dry-run $(basename -a "${sysusers[@]}" | tr '\n' ' ')"
        mkdir -p "$tmp/root/etc"
        set +e
        out=$(systemd-sysusers --dry-run --root="$tmp/root" "${sysusers[@]}" 2>&1)
        rc=$?
        set -e
        # The dry run reports what it would do; anything else is a warning or an error.
        bad=$(printf '%s\n' "$out" | grep -vE "^(Creating (user|group) |Would write |$)" || true)
        if [[ $rc -ne 0 || -n $bad ]]; then
            printf '%s\n' "$out"
            echo "FAIL: systemd-sysusers (exit $rc)"
            status=1
        else
            echo "ok: would create $(printf '%s\n' "$out" | grep -c '^Creating ') users/groups"
        fi
    else
        echo "note: systemd-sysusers not found, sysusers file not checked"
    fi
fi

exit $status

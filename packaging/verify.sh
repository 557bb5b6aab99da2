#!/usr/bin/env bash
# Verifies the .deb and .rpm end to end (CI runs it after the tests; by hand: as root, on Debian):
#   - builds both packages with packaging/build.sh (and a second version for the upgrade test)
#   - checks the .deb's contents, control data, conffiles and scripts; `systemd-analyze verify`s
#     the unit as installed
#   - debootstraps a minimal Debian of the host's release (the host's mirror) and, in it:
#     apt-get installs the .deb; runs systemd-sysusers/systemd-tmpfiles --root; starts the
#     packaged binary chrooted as user cairn with the packaged config (ports moved to free ones)
#     under a fake NOTIFY_SOCKET, waits for READY=1, queries DNS and HTTP, stops it with SIGTERM
#     (exit 0); upgrades keeping an edited conffile (--force-confold: edit kept, .dpkg-dist);
#     removes and purges
#   - checks the .rpm's files, config files and scripts, installs it with `rpm --root`
#     (scriptlets run in the same root), checks what landed, upgrades and erases it
# Needs root and network access to the Debian mirror. Installs missing tools with apt-get.
# Env: CAIRN_VERIFY_MIRROR=<url> overrides the mirror; CAIRN_VERIFY_ROOT=dpkg skips debootstrap
# and uses a bare `dpkg --root` tree (also the fallback when debootstrap fails), which cannot
# chroot: the binary then runs from the tree, and rpm scriptlets are not run.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

step() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
fail() {
    printf 'verify.sh: FAIL: %s\n' "$*" >&2
    exit 1
}
check() { # check DESCRIPTION COMMAND...: runs the command, fails with the description if it fails
    local what="$1"
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot, dpkg/rpm --root)"

work=$(mktemp -d /tmp/cairn-verify.XXXXXX)
chmod 755 "$work"
agent_pid=""
listener_pid=""
agent_log="$work/agent.log"
cleanup() {
    local rc=$?
    set +e
    for pid in $agent_pid $listener_pid; do
        kill -KILL "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    if [ "$rc" -ne 0 ] && [ -s "$agent_log" ]; then
        echo "--- last lines of the agent's log:" >&2
        tail -n 30 "$agent_log" >&2
    fi
    rm -rf "$work"
    if [ "$rc" -ne 0 ]; then
        echo "verify.sh: FAILED (exit $rc) after $(($(date +%s) - started))s" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
step "tools"
declare -A tool_package=(
    [debootstrap]=debootstrap [rpm]=rpm [dig]=dnsutils [curl]=curl [python3]=python3
    [systemd-analyze]=systemd [systemd-sysusers]=systemd [systemd-tmpfiles]=systemd
    [setpriv]=util-linux [dpkg-deb]=dpkg
)
missing=()
for tool in "${!tool_package[@]}"; do
    command -v "$tool" >/dev/null || missing+=("${tool_package[$tool]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "   installing: ${missing[*]}"
    timeout 300 apt-get update -qq
    timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
ok "debootstrap rpm dig curl python3 systemd-analyze systemd-sysusers systemd-tmpfiles setpriv"

# ---------------------------------------------------------------------------------------------
step "build the packages (packaging/build.sh)"
base_version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
base_version="${base_version//-/\~}"
# The upgrade: the next patch version (0.1.0 -> 0.1.1), packaged from the same binary.
next_version=$(echo "${base_version%%[~+]*}" | awk -F. -v OFS=. '{ $NF = $NF + 1; print }')
mkdir -p "$work/pkg"
build() { # build VERSION -> copies the .deb and .rpm to $work/pkg/<version>.{deb,rpm}
    local out
    out=$(timeout 3600 bash packaging/build.sh --version "$1" | tail -n 2)
    cp "$(sed -n 1p <<<"$out")" "$work/pkg/$1.deb"
    cp "$(sed -n 2p <<<"$out")" "$work/pkg/$1.rpm"
    echo "   built $1: $(tr '\n' ' ' <<<"$out")"
}
build "$base_version"
build "$next_version"
deb1="$work/pkg/$base_version.deb"
deb2="$work/pkg/$next_version.deb"
rpm1="$work/pkg/$base_version.rpm"
rpm2="$work/pkg/$next_version.rpm"

# ---------------------------------------------------------------------------------------------
step "the .deb: contents, control data, conffiles, scripts"
dpkg-deb -c "$deb1" | awk '{ sub(/^root\/root$/, "0/0", $2); print $1, $2, $NF }' >"$work/deb.list"
sed 's/^/   | /' "$work/deb.list"
has_entry() { # has_entry MODE OWNER PATH: an exact line of the listing
    grep -qxF -- "$1 $2 $3" "$work/deb.list"
}
check "binary /usr/bin/cairn 0755 root" has_entry -rwxr-xr-x 0/0 ./usr/bin/cairn
check "config /etc/cairn/cairn.json 0640 root (group cairn set by postinst)" \
    has_entry -rw-r----- 0/0 ./etc/cairn/cairn.json
check "zones dir /etc/cairn/zones/" has_entry drwxr-xr-x 0/0 ./etc/cairn/zones/
check "unit /usr/lib/systemd/system/cairn.service" \
    has_entry -rw-r--r-- 0/0 ./usr/lib/systemd/system/cairn.service
check "sysusers /usr/lib/sysusers.d/cairn.conf" has_entry -rw-r--r-- 0/0 ./usr/lib/sysusers.d/cairn.conf
check "tmpfiles /usr/lib/tmpfiles.d/cairn.conf" has_entry -rw-r--r-- 0/0 ./usr/lib/tmpfiles.d/cairn.conf
check "copyright and third-party licenses" \
    grep -q 'usr/share/doc/cairn/THIRD-PARTY-LICENSES$' "$work/deb.list"
check "nothing under /var/lib/cairn (the agent refuses a foreign data dir)" \
    bash -c "! grep -q '/var/lib/cairn' '$work/deb.list'"
dpkg-deb -I "$deb1" >"$work/deb.info"
sed 's/^/   | /' "$work/deb.info"
check "Package: cairn, Version: $base_version-1" \
    bash -c "grep -qx ' Package: cairn' '$work/deb.info' && grep -qx ' Version: $base_version-1' '$work/deb.info'"
check "Depends on libc6, procps and systemd-sysusers" \
    bash -c "grep '^ Depends: libc6' '$work/deb.info' | grep -qF 'procps, systemd | systemd-standalone-sysusers'"
dpkg-deb -e "$deb1" "$work/control"
check "conffiles lists /etc/cairn/cairn.json" grep -qx /etc/cairn/cairn.json "$work/control/conffiles"
for script in postinst prerm postrm; do
    check "$script is valid sh" sh -n "$work/control/$script"
done
check "postinst: sysusers and chgrp before the service is started" python3 - "$work/control/postinst" <<'EOF'
import sys
text = open(sys.argv[1]).read()
order = [text.find(s) for s in ("systemd-sysusers", "chgrp", "deb-systemd-helper enable", "deb-systemd-invoke")]
sys.exit(0 if -1 not in order and order == sorted(order) else 1)
EOF
check "postrm: purge removes /var/lib/cairn" grep -q 'rm -rf "$DPKG_ROOT/var/lib/cairn"' "$work/control/postrm"
mkdir "$work/data"
dpkg-deb -x "$deb1" "$work/data"
check "packaged config is packaging/cairn.json" cmp -s "$work/data/etc/cairn/cairn.json" packaging/cairn.json
check "packaged config is valid JSON" python3 -m json.tool "$work/data/etc/cairn/cairn.json" >/dev/null
version_out=$("$work/data/usr/bin/cairn" version 2>&1) || fail "the packaged binary does not run: $version_out"
ok "the packaged binary runs: cairn version -> $version_out"

# ---------------------------------------------------------------------------------------------
step "a Debian root to install into"
. /etc/os-release
root="$work/root"
mode="${CAIRN_VERIFY_ROOT:-debootstrap}"
host_mirror() { # the host's configured Debian mirror for suite $1 (one-line or deb822 sources)
    python3 - "$1" <<'EOF'
import glob, re, sys
suite = sys.argv[1]
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = line.split("#")[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and words[1] == suite:
            print(words[0]); sys.exit(0)
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for block in re.split(r"\n\s*\n", open(path).read()):
        fields = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and not line.startswith("#") and ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
        if fields.get("enabled", ["yes"])[0].lower() == "no":
            continue
        if "deb" in fields.get("types", []) and suite in fields.get("suites", []) and fields.get("uris"):
            print(fields["uris"][0]); sys.exit(0)
sys.exit(1)
EOF
}
if [ "$mode" = debootstrap ]; then
    if [ "${ID:-}" != debian ] || [ -z "${VERSION_CODENAME:-}" ]; then
        echo "   the host is not Debian (ID=${ID:-?}): no release to debootstrap"
        mode=dpkg
    elif ! mirror="${CAIRN_VERIFY_MIRROR:-$(host_mirror "$VERSION_CODENAME")}"; then
        echo "   no Debian mirror for $VERSION_CODENAME in /etc/apt/sources.list{,.d}"
        mode=dpkg
    else
        echo "   debootstrap --variant=minbase $VERSION_CODENAME from $mirror"
        if timeout 900 debootstrap --variant=minbase "$VERSION_CODENAME" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
            ok "debootstrap ($(du -sh "$root" | cut -f1))"
        else
            tail -n 5 "$work/debootstrap.log" | sed 's/^/   | /'
            echo "   debootstrap FAILED; falling back to a dpkg --root tree"
            rm -rf "$root"
            mode=dpkg
        fi
    fi
fi
if [ "$mode" = dpkg ]; then
    echo "   NOTE: dpkg --root tree: maintainer scripts run outside the root (DPKG_ROOT), the agent"
    echo "   runs from the tree without chroot (its zones_dir, /etc/cairn/zones, is then missing),"
    echo "   rpm scriptlets are skipped"
    if [ -d /run/systemd/system ]; then
        fail "the dpkg --root fallback runs maintainer scripts on this host, whose systemd is running; refusing"
    fi
    mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc" "$root/tmp"
    : >"$root/var/lib/dpkg/status"
fi

# in_root CMD...: runs CMD in the root (chroot; in the dpkg tree, on the host with --root flags)
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C DEBIAN_FRONTEND=noninteractive "$@"; }
in_tmp() { # in_tmp FILE: the path of the root's /tmp/FILE as dpkg_root's dpkg sees it
    if [ "$mode" = debootstrap ]; then echo "/tmp/$1"; else echo "$root/tmp/$1"; fi
}
dpkg_root() { # dpkg_root DPKG-ARGS...: dpkg acting on the root
    if [ "$mode" = debootstrap ]; then
        in_root dpkg "$@"
    else
        dpkg --root="$root" --force-script-chrootless --force-depends --log=/dev/null "$@"
    fi
}

# ---------------------------------------------------------------------------------------------
step "install the .deb in the root"
cp "$deb1" "$deb2" "$root/tmp/"
if [ "$mode" = debootstrap ]; then
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    # apt resolves the dependencies (systemd, procps) from the root's sources, as a user's would.
    if ! timeout 600 chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "/tmp/$(basename "$deb1")" >"$work/apt.log" 2>&1; then
        tail -n 20 "$work/apt.log" >&2
        fail "apt-get install of the .deb in the root"
    fi
    grep -E '^(Setting up cairn|Creating (user|group) .cairn|Created symlink .*cairn)' "$work/apt.log" | sed 's/^/   | /'
else
    dpkg_root -i "$(in_tmp "$(basename "$deb1")")" >"$work/apt.log" 2>&1 || {
        cat "$work/apt.log" >&2
        fail "dpkg --root -i"
    }
fi
check "dpkg says installed $base_version-1" \
    bash -c "[ \"\$(dpkg-query --admindir='$root/var/lib/dpkg' -W -f='\${Status} \${Version}' cairn)\" = 'install ok installed $base_version-1' ]"
check "sysusers (postinst) created user cairn" grep -q '^cairn:' "$root/etc/passwd"
cairn_uid=$(awk -F: '$1 == "cairn" { print $3 }' "$root/etc/passwd")
cairn_gid=$(awk -F: '$1 == "cairn" { print $3 }' "$root/etc/group")
check "cairn's shell is nologin, home /var/lib/cairn" \
    bash -c "grep -q '^cairn:[^:]*:$cairn_uid:$cairn_gid:[^:]*:/var/lib/cairn:/usr/sbin/nologin$' '$root/etc/passwd'"
check "/etc/cairn/cairn.json is 0640 root:cairn" \
    bash -c "[ \"\$(stat -c '%a %u:%g' '$root/etc/cairn/cairn.json')\" = '640 0:$cairn_gid' ]"
if [ "$mode" = debootstrap ]; then
    check "the unit is enabled (multi-user.target.wants)" \
        test -L "$root/etc/systemd/system/multi-user.target.wants/cairn.service"
fi

step "systemd-sysusers --root, systemd-tmpfiles --root --create"
systemd-sysusers --root="$root"
check "systemd-sysusers --root (idempotent): cairn still uid $cairn_uid" \
    bash -c "[ \"\$(awk -F: '\$1 == \"cairn\" { print \$3 }' '$root/etc/passwd')\" = '$cairn_uid' ]"
if [ "$mode" = debootstrap ]; then
    check "systemd-tmpfiles --root --create" systemd-tmpfiles --root="$root" --create
else
    check "systemd-tmpfiles --root --create cairn.conf" systemd-tmpfiles --root="$root" --create cairn.conf
fi
check "/var/lib/cairn is an empty 0700 cairn:cairn directory" \
    bash -c "[ \"\$(stat -c '%F %a %u:%g' '$root/var/lib/cairn')\" = 'directory 700 $cairn_uid:$cairn_gid' ] && [ -z \"\$(ls -A '$root/var/lib/cairn')\" ]"

step "systemd-analyze verify the installed unit"
if [ "$mode" = dpkg ] && [ ! -e "$root/bin/kill" ] && [ ! -e "$root/usr/bin/kill" ]; then
    # The bare tree has no /bin/kill (ExecReload); the real dependency (procps) provides it.
    host_kill=$(type -P kill) || fail "no kill binary on this host (procps)"
    mkdir -p "$root/usr/bin" && cp "$host_kill" "$root/usr/bin/kill"
    [ -e "$root/bin" ] || ln -s usr/bin "$root/bin"
    # ... nor systemd's own units (sysinit.target, ...) that verify loads: borrow the host's.
    cp -rn /lib/systemd/system/. "$root/usr/lib/systemd/system/"
fi
# --root makes it check ExecStart/ExecReload binaries inside the root. It exits 0 on
# unknown keys or bad values (they are warnings), so any output at all is a failure.
if ! verify_out=$(timeout 60 systemd-analyze verify --man=no --root="$root" cairn.service 2>&1); then
    echo "$verify_out" | sed 's/^/   | /'
    fail "systemd-analyze verify"
fi
if [ -n "$verify_out" ]; then
    echo "$verify_out" | sed 's/^/   | /'
    fail "systemd-analyze verify printed warnings"
fi
ok "systemd-analyze verify --man=no --root=<root> cairn.service: no warnings"

# ---------------------------------------------------------------------------------------------
# The agent, run from the root as systemd would run it (user cairn, packaged config), with the
# ports moved to free ones by flags, and a datagram socket standing in for systemd's.
free_port() { # a port free on 127.0.0.1 for both TCP and UDP, not in $1
    python3 - "${1:-0}" <<'EOF'
import socket, sys
avoid = int(sys.argv[1])
for _ in range(100):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        t.close(); u.close()
    if port != avoid:
        print(port); sys.exit(0)
sys.exit(1)
EOF
}
cat >"$work/notify_listen.py" <<'EOF'
# notify_listen.py SOCKET LOG SECONDS: logs sd_notify datagrams until STOPPING=1 or the deadline.
import os, socket, sys, time
path, log, deadline = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)  # the agent runs as cairn
with open(log, "a", buffering=1) as f:
    f.write("LISTENING\n")
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data = s.recv(4096)
        except socket.timeout:
            break
        f.write(data.decode(errors="replace").rstrip("\n") + "\n")
        if b"STOPPING=1" in data:
            break
EOF
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s
    local deadline=$(($(date +%s) + $1)) what="$2"
    shift 2
    until "$@"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then fail "$what: not within the deadline"; fi
        if [ -n "$agent_pid" ] && ! kill -0 "$agent_pid" 2>/dev/null; then fail "$what: the agent exited"; fi
        sleep 0.1
    done
}
run_agent() { # run_agent LABEL: start, READY=1, DNS, HTTP, SIGTERM -> exit 0
    local label="$1" http_port dns_port notify_dir="$root/run/cairn-verify" notify_log="$work/notify.log"
    http_port=$(free_port)
    dns_port=$(free_port "$http_port")
    rm -rf "$notify_dir" "$notify_log"
    mkdir -p "$notify_dir"
    chmod 755 "$notify_dir"
    python3 "$work/notify_listen.py" "$notify_dir/notify" "$notify_log" 90 &
    listener_pid=$!
    wait_for 10 "notify listener up" grep -qs LISTENING "$notify_log"
    : >"$agent_log"
    if [ "$mode" = debootstrap ]; then
        echo "   chroot --userspec=cairn ($cairn_uid:$cairn_gid) /usr/bin/cairn agent -config-dir /etc/cairn -http-port $http_port -dns-port $dns_port"
        chroot --userspec="$cairn_uid:$cairn_gid" "$root" /usr/bin/env -i PATH=/usr/bin:/bin \
            NOTIFY_SOCKET=/run/cairn-verify/notify \
            /usr/bin/cairn agent -config-dir /etc/cairn -http-port "$http_port" -dns-port "$dns_port" \
            >"$agent_log" 2>&1 &
    else
        echo "   setpriv (cairn $cairn_uid:$cairn_gid) <root>/usr/bin/cairn agent -config-dir <root>/etc/cairn -data-dir <root>/var/lib/cairn ..."
        setpriv --reuid="$cairn_uid" --regid="$cairn_gid" --clear-groups /usr/bin/env -i PATH=/usr/bin:/bin \
            NOTIFY_SOCKET="$notify_dir/notify" \
            "$root/usr/bin/cairn" agent -config-dir "$root/etc/cairn" -data-dir "$root/var/lib/cairn" \
            -http-port "$http_port" -dns-port "$dns_port" >"$agent_log" 2>&1 &
    fi
    agent_pid=$!
    local t0=$SECONDS
    wait_for 30 "READY=1 on NOTIFY_SOCKET" grep -qx READY=1 "$notify_log"
    ok "$label: READY=1 after $((SECONDS - t0))s ($(grep '^STATUS=' "$notify_log" | head -n 1))"

    local answer leader
    answer=$(dig +short +time=2 +tries=3 @127.0.0.1 -p "$dns_port" consul.service.consul A)
    [ "$answer" = 127.0.0.1 ] || fail "dig consul.service.consul answered '$answer', expected 127.0.0.1"
    ok "$label: dig @127.0.0.1 -p $dns_port consul.service.consul -> $answer"
    answer=$(dig +tcp +short +time=2 +tries=3 @127.0.0.1 -p "$dns_port" consul.service.consul A)
    [ "$answer" = 127.0.0.1 ] || fail "dig +tcp consul.service.consul answered '$answer'"
    ok "$label: the same over TCP"
    leader=$(curl -fsS -m 10 "http://127.0.0.1:$http_port/v1/status/leader")
    [ -n "$leader" ] && [ "$leader" != '""' ] || fail "/v1/status/leader answered '$leader'"
    ok "$label: GET /v1/status/leader -> $leader"
    curl -fsS -m 10 "http://127.0.0.1:$http_port/v1/agent/self" >"$work/self.json"
    python3 - "$work/self.json" <<'EOF' || fail "/v1/agent/self: not a server's self description"
import json, sys
c = json.load(open(sys.argv[1]))["Config"]
assert c["Server"] is True and c["Revision"].startswith("cairn"), c
print("   ok: GET /v1/agent/self -> Server=%s Datacenter=%s Revision=%s" % (c["Server"], c["Datacenter"], c["Revision"]))
EOF

    kill -TERM "$agent_pid"
    local deadline=$((SECONDS + 20)) rc=0
    while kill -0 "$agent_pid" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || fail "the agent did not exit within 20 s of SIGTERM"
        sleep 0.1
    done
    wait "$agent_pid" || rc=$?
    agent_pid=""
    [ "$rc" = 0 ] || fail "the agent exited $rc after SIGTERM, expected 0"
    ok "$label: SIGTERM -> exit 0"
    wait_for 10 "STOPPING=1 on NOTIFY_SOCKET" grep -qx STOPPING=1 "$notify_log"
    ok "$label: STOPPING=1"
    wait "$listener_pid" || true
    listener_pid=""
    rm -rf "$notify_dir"
}

step "run the packaged agent from the root"
run_agent "first start"
check "the agent made its data dir its own (marker, lock, still 0700 cairn)" \
    bash -c "[ -e '$root/var/lib/cairn/lock' ] && [ \"\$(stat -c '%a %u' '$root/var/lib/cairn')\" = '700 $cairn_uid' ]"

# ---------------------------------------------------------------------------------------------
step "upgrade $base_version-1 -> $next_version-1 with an edited conffile (dpkg -i --force-confold)"
config="$root/etc/cairn/cairn.json"
python3 - "$config" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["log_level"] = "debug"  # the admin's edit
open(sys.argv[1], "w").write(json.dumps(c, indent=2) + "\n")
EOF
cp "$config" "$work/edited.json"
dpkg_root -i --force-confold "$(in_tmp "$(basename "$deb2")")" >"$work/upgrade.log" 2>&1 || {
    cat "$work/upgrade.log" >&2
    fail "dpkg -i --force-confold $next_version"
}
check "dpkg says installed $next_version-1" \
    bash -c "[ \"\$(dpkg-query --admindir='$root/var/lib/dpkg' -W -f='\${Version}' cairn)\" = '$next_version-1' ]"
check "the edited conffile is kept" cmp -s "$config" "$work/edited.json"
check "no .dpkg-dist: the packaged config did not change" test ! -e "$config.dpkg-dist"
check "its group is still cairn" bash -c "[ \"\$(stat -c '%a %g' '$config')\" = '640 $cairn_gid' ]"

# A later revision that ships a changed default config: with --force-confold the admin's file
# stays and the new default lands beside it as .dpkg-dist.
third_version="$next_version-2"
rm -rf "$work/repack"
dpkg-deb -R "$deb2" "$work/repack"
sed -i "s/^Version: .*/Version: $third_version/" "$work/repack/DEBIAN/control"
python3 - "$work/repack/etc/cairn/cairn.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["dns_config"] = {"node_ttl": "0s"}  # a changed default (same behaviour)
open(sys.argv[1], "w").write(json.dumps(c, indent=2) + "\n")
EOF
(cd "$work/repack" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | xargs -0 md5sum >DEBIAN/md5sums)
dpkg-deb --root-owner-group -Zxz -b "$work/repack" "$root/tmp/cairn_$third_version.deb" >/dev/null
echo "   repacked $next_version-1 as $third_version with a changed /etc/cairn/cairn.json"
dpkg_root -i --force-confold "$(in_tmp "cairn_$third_version.deb")" >"$work/upgrade.log" 2>&1 || {
    cat "$work/upgrade.log" >&2
    fail "dpkg -i --force-confold $third_version"
}
check "dpkg says installed $third_version" \
    bash -c "[ \"\$(dpkg-query --admindir='$root/var/lib/dpkg' -W -f='\${Version}' cairn)\" = '$third_version' ]"
check "the edited conffile is kept" cmp -s "$config" "$work/edited.json"
check "the new default is beside it as cairn.json.dpkg-dist" \
    cmp -s "$config.dpkg-dist" "$work/repack/etc/cairn/cairn.json"
run_agent "after the upgrades (same data dir, edited config)"
check "the agent used the edited config (log_level debug)" grep -q DEBUG "$agent_log"

# ---------------------------------------------------------------------------------------------
step "remove, then purge"
dpkg_root -r cairn >"$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; fail "dpkg -r cairn"; }
check "remove: the binary and the unit are gone" \
    test ! -e "$root/usr/bin/cairn" -a ! -e "$root/usr/lib/systemd/system/cairn.service"
check "remove: the config and the data stay" test -e "$config" -a -e "$root/var/lib/cairn/lock"
dpkg_root -P cairn >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "dpkg -P cairn"; }
check "purge: /etc/cairn (config, .dpkg-dist, zones) is gone" test ! -e "$root/etc/cairn"
check "purge: /var/lib/cairn is gone" test ! -e "$root/var/lib/cairn"
if [ "$mode" = debootstrap ]; then
    check "purge: the unit's enablement symlink is gone" \
        test ! -L "$root/etc/systemd/system/multi-user.target.wants/cairn.service"
fi
check "purge: dpkg no longer knows cairn" \
    bash -c "! dpkg-query --admindir='$root/var/lib/dpkg' -W cairn >/dev/null 2>&1"
check "purge: the system user cairn stays (by design)" grep -q '^cairn:' "$root/etc/passwd"

# ---------------------------------------------------------------------------------------------
step "the .rpm: files, config files, scripts"
rpm -qpi "$rpm1" 2>/dev/null | sed 's/^/   | /'
rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm1" >"$work/rpm.list"
sed 's/^/   | /' "$work/rpm.list"
check "rpm -qpl lists binary, unit, sysusers, tmpfiles, config" bash -c "
    rpm -qpl '$rpm1' >'$work/rpm.files' &&
    for f in /usr/bin/cairn /usr/lib/systemd/system/cairn.service /usr/lib/sysusers.d/cairn.conf \
             /usr/lib/tmpfiles.d/cairn.conf /etc/cairn/cairn.json; do grep -qx \"\$f\" '$work/rpm.files' || exit 1; done"
check "rpm -qpc lists /etc/cairn/cairn.json" bash -c "rpm -qpc '$rpm1' | grep -qx /etc/cairn/cairn.json"
check "the config is %config(noreplace), 0640 root:cairn" grep -qx -- '-rw-r----- root:cairn cn /etc/cairn/cairn.json' "$work/rpm.list"
check "rpm version is $base_version-1" bash -c "[ \"\$(rpm -qp --qf '%{VERSION}-%{RELEASE}' '$rpm1')\" = '$base_version-1' ]"
check "rpm version of the second build is $next_version-1" \
    bash -c "[ \"\$(rpm -qp --qf '%{VERSION}-%{RELEASE}' '$rpm2')\" = '$next_version-1' ]"
check "requires systemd" bash -c "rpm -qpR '$rpm1' | grep -qx systemd"
rpm -qp --scripts "$rpm1" >"$work/rpm.scripts"
sed 's/^/   | /' "$work/rpm.scripts"
check "scriptlets: user in %pre, tmpfiles in %post, disable in %preun" bash -c "
    grep -q 'useradd -r -g cairn' '$work/rpm.scripts' && grep -q 'systemd-tmpfiles --create' '$work/rpm.scripts' &&
    grep -q 'disable cairn.service' '$work/rpm.scripts'"

step "install the .rpm in the root (rpm --root --initdb; rpm -ivh --root --nodeps)"
rpm_root() { rpm --root "$root" "$@" 2> >(grep -v -e 'use Alien' -e 'assuming you know what you are doing' >&2); }
rpm_opts=(--nodeps)
if [ "$mode" = debootstrap ]; then
    # So that %pre's useradd path runs rather than finding the deb's user.
    in_root userdel cairn
    in_root bash -c '! getent group cairn >/dev/null || groupdel cairn'
else
    rpm_opts+=(--noscripts)  # no /bin/sh in the bare tree
    echo "   NOTE: bare tree: installing with --noscripts"
fi
rpm_root --initdb
rpm_root -ivh "${rpm_opts[@]}" "$rpm1" >"$work/rpm-install.log" 2>&1 || {
    cat "$work/rpm-install.log" >&2
    fail "rpm -ivh --root"
}
sed 's/^/   | /' "$work/rpm-install.log"
check "rpm -q --root: cairn-$base_version-1" bash -c "rpm --root '$root' -q cairn 2>/dev/null | grep -qx 'cairn-$base_version-1.*'"
for f in /usr/bin/cairn /usr/lib/systemd/system/cairn.service /usr/lib/sysusers.d/cairn.conf \
    /usr/lib/tmpfiles.d/cairn.conf /etc/cairn/cairn.json /etc/cairn/zones/README; do
    check "landed: $f" test -f "$root$f"
done
check "the binary is the .deb's" cmp -s "$root/usr/bin/cairn" "$work/data/usr/bin/cairn"
if [ "$mode" = debootstrap ]; then
    check "%pre created user cairn" grep -q '^cairn:' "$root/etc/passwd"
    cairn_gid=$(awk -F: '$1 == "cairn" { print $3 }' "$root/etc/group")
    check "/etc/cairn/cairn.json is 0640 root:cairn" \
        bash -c "[ \"\$(stat -c '%a %u:%g' '$root/etc/cairn/cairn.json')\" = '640 0:$cairn_gid' ]"
    # %post's systemd-tmpfiles needs /proc, which the chroot lacks; do what it does from outside.
    systemd-tmpfiles --root="$root" --create
    check "tmpfiles: /var/lib/cairn 0700, group cairn" \
        bash -c "[ \"\$(stat -c '%a %g' '$root/var/lib/cairn')\" = '700 $cairn_gid' ]"
fi
echo '{"log_level": "debug"}' >"$work/edited.json"
cp "$work/edited.json" "$root/etc/cairn/cairn.json"
rpm_root -Uvh "${rpm_opts[@]}" "$rpm2" >"$work/rpm-upgrade.log" 2>&1 || {
    cat "$work/rpm-upgrade.log" >&2
    fail "rpm -Uvh --root $next_version"
}
check "rpm -Uvh: cairn-$next_version-1, the edited config kept" \
    bash -c "rpm --root '$root' -q cairn 2>/dev/null | grep -qx 'cairn-$next_version-1.*' && cmp -s '$root/etc/cairn/cairn.json' '$work/edited.json'"
rpm_root -e "${rpm_opts[@]}" cairn >"$work/rpm-erase.log" 2>&1 || {
    cat "$work/rpm-erase.log" >&2
    fail "rpm -e --root"
}
check "rpm -e: the binary and the unit are gone" \
    test ! -e "$root/usr/bin/cairn" -a ! -e "$root/usr/lib/systemd/system/cairn.service"
check "rpm -e: the edited config is kept as cairn.json.rpmsave" cmp -s "$root/etc/cairn/cairn.json.rpmsave" "$work/edited.json"
check "rpm -e: rpm no longer knows cairn" bash -c "! rpm --root '$root' -q cairn >/dev/null 2>&1"

printf '\nverify.sh: all checks passed in %ss (mode: %s)\n' "$(($(date +%s) - started))" "$mode"

# shellcheck shell=bash
# Shared helpers for the zkfs scripts. Source it, do not run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Provides: say, die, need_root_or_sudo, repo_root, free_ports, free_port,
# zk_classpath, zk_java_opts, zk_4lw, wait_pid_exit, pid_alive, is_mountpoint.

# Messages go to stderr so that stdout stays machine-readable.
say() {
    printf '==> %s\n' "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Sets the array SUDO to () when root, to (sudo) when sudo exists, else dies.
# Use as: need_root_or_sudo; "${SUDO[@]}" apt-get ...
need_root_or_sudo() {
    # shellcheck disable=SC2034 # used by the scripts that source this file
    SUDO=()
    if [[ ${EUID:-$(id -u)} -eq 0 ]]; then
        return 0
    fi
    if command -v sudo >/dev/null 2>&1; then
        # shellcheck disable=SC2034
        SUDO=(sudo)
        return 0
    fi
    die "this needs root (or sudo): $*"
}

# Absolute path of the repository's top directory.
repo_root() {
    (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

# Ports in use by any TCP socket (any state) on this machine, one per line.
_used_tcp_ports() {
    local f _sl local_addr _rest
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $f ]] || continue
        while read -r _sl local_addr _rest; do
            [[ $local_addr == *:* ]] || continue
            printf '%d\n' "$((16#${local_addr##*:}))"
        done <"$f"
    done
}

# free_ports N: prints N distinct loopback TCP ports that nothing uses now,
# one per line. They are picked below the kernel's ephemeral range so that
# outgoing connections are unlikely to grab them before the server binds.
free_ports() {
    local n=${1:-1} lo hi start picked=() port tries=0 p dup
    local -A used=()
    read -r start _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || start=32768
    hi=$((start - 1))
    lo=$((hi - 12000))
    ((lo > 1024)) || lo=1025
    while read -r p; do used[$p]=1; done < <(_used_tcp_ports)
    while ((${#picked[@]} < n)); do
        ((tries++ < 10000)) || die "no free loopback port found"
        port=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
        [[ -z ${used[$port]:-} ]] || continue
        dup=0
        for p in "${picked[@]}"; do [[ $p != "$port" ]] || dup=1; done
        ((dup == 0)) || continue
        # Double check that nothing accepts connections there.
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        picked+=("$port")
    done
    printf '%s\n' "${picked[@]}"
}

free_port() {
    free_ports 1
}

# Classpath for Debian's ZooKeeper 3.8 (package `zookeeper`/libzookeeper-java).
# zookeeper.jar's manifest Class-Path already pulls in jute, netty, metrics,
# jackson, commons-*, snappy and slf4j-api; what it lacks is an slf4j binding,
# so add slf4j-log4j12 + log4j 1.2 (both installed as dependencies) to get logs.
# Override with ZKFS_ZK_CLASSPATH.
zk_classpath() {
    if [[ -n ${ZKFS_ZK_CLASSPATH:-} ]]; then
        printf '%s\n' "$ZKFS_ZK_CLASSPATH"
        return 0
    fi
    local jar
    for jar in /usr/share/java/zookeeper.jar /usr/share/java/zookeeper-jute.jar \
        /usr/share/java/slf4j-log4j12.jar /usr/share/java/log4j-1.2.jar; do
        [[ -r $jar ]] || die "missing $jar (run scripts/install-deps)"
    done
    printf '%s\n' "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar"
}

# JVM options that keep a small test server cheap on a 2-core machine.
# ZKFS_ZK_HEAP (default 256m) sizes the heap; ZKFS_ZK_FULL_JIT=1 keeps the
# optimizing JIT (benchmarks want a server at full speed).
zk_java_opts() {
    printf '%s\n' "-Xmx${ZKFS_ZK_HEAP:-256m}" -XX:+UseSerialGC -XX:-UsePerfData \
        -Djava.awt.headless=true
    [[ ${ZKFS_ZK_FULL_JIT:-0} == 1 ]] || printf '%s\n' -XX:TieredStopAtLevel=1
}

# zk_4lw PORT WORD: sends a ZooKeeper four-letter word (ruok, srvr, stat, ...)
# to 127.0.0.1:PORT with bash's /dev/tcp and prints the answer. Fails if
# nothing answers within 3 seconds.
zk_4lw() {
    # shellcheck disable=SC2016 # $0 and $1 expand in the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1; printf %s "$1" >&3; cat <&3' \
        "$1" "$2" 2>/dev/null
}

# pid_alive PID: true while PID runs. A zombie counts as dead: here PID 1 reaps
# orphans only every ~2 s, and kill -0 succeeds on zombies.
pid_alive() {
    local pid=${1:-} stat
    [[ -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# wait_pid_exit PID SECONDS: waits until PID is gone; fails on timeout.
wait_pid_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while pid_alive "$pid"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

# is_mountpoint PATH: true when PATH is a mount point per /proc/self/mountinfo
# (does not touch PATH itself, so it cannot hang on a wedged FUSE mount).
is_mountpoint() {
    local target=$1 _a _b _c _d mp _rest
    while read -r _a _b _c _d mp _rest; do
        mp=${mp//\\040/ }
        mp=${mp//\\011/$'\t'}
        mp=${mp//\\012/$'\n'}
        mp=${mp//\\134/\\}
        [[ $mp != "$target" ]] || return 0
    done </proc/self/mountinfo
    return 1
}

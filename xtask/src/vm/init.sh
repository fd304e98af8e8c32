#!/bin/sh
# PID 1 of holden's VM boot test (`cargo xtask vm-test` puts it in the initramfs as /init).
# Runs busybox ash. Every check prints `HOLDEN-VM-PASS: <step> ...` or `HOLDEN-VM-FAIL: ...`
# on the serial console; the host asserts on those lines and on the orchestrator's log,
# which is printed at the end between HOLDEN-VM-LOG-BEGIN and HOLDEN-VM-LOG-END.

/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
# As on the AutoSD image: /run/holden (control socket) on the host, /run/holden/qm shared
# with QM (here: the same directory, seen from the QM stand-in's mount namespace).
mkdir -p /run/holden/qm

LOG=/tmp/orchestrator.log
AGENT_LOG=/tmp/agent.log
CONFIG=/etc/holden/vm.toml
: >"$LOG"
: >"$AGENT_LOG"

say() { echo "HOLDEN-VM: $*"; }
pass() { echo "HOLDEN-VM-PASS: $*"; }
finish() {
    echo "HOLDEN-VM-LOG-BEGIN"
    sed 's/^/orch| /' "$LOG"
    sed 's/^/agent| /' "$AGENT_LOG"
    echo "HOLDEN-VM-LOG-END"
    echo "HOLDEN-VM-END"
    sync
    poweroff -f
    sleep 60
}
fail() {
    echo "HOLDEN-VM-FAIL: $*"
    finish
}
# count PATTERN: lines of the orchestrator log matching PATTERN (a basic regex)
count() { grep -c -e "$1" "$LOG"; }
# wait_count PATTERN N WHAT: wait (30 s at most) until PATTERN matches N lines
wait_count() {
    tries=0
    while [ "$(count "$1")" -lt "$2" ]; do
        tries=$((tries + 1))
        [ "$tries" -gt 300 ] && fail "$3: timed out waiting for $2 lines matching '$1'"
        usleep 100000
    done
}
# last_pid SERVICE: the pid of the service's latest spawn, from the orchestrator's log
last_pid() {
    sed -n "s/.*service=$1 .*reason=spawned spawned_pid=\([0-9]*\).*/\1/p" "$LOG" | tail -n 1
}
# alive PID: the process exists and is not a zombie
alive() {
    [ -n "$1" ] && [ -e "/proc/$1/status" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

probe() { echo "HOLDEN-VM-PROBE: $*"; }

# What to do, from the kernel command line (cargo xtask vm-test sets it):
# holden.scenario=supervision|io-uring-disabled, holden.io_uring_disabled=N (set first).
SCENARIO=supervision
URING=
for word in $(cat /proc/cmdline); do
    case "$word" in
        holden.scenario=*) SCENARIO=${word#holden.scenario=} ;;
        holden.io_uring_disabled=*) URING=${word#holden.io_uring_disabled=} ;;
    esac
done
if [ -n "$URING" ]; then
    echo "$URING" >/proc/sys/kernel/io_uring_disabled \
        || fail "cannot set kernel.io_uring_disabled=$URING"
fi

say "boot: kernel $(uname -r), kernel.io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo absent)"
# What this kernel has; the host compares it with the orchestrator's start line.
probe "arch=$(uname -m)"
probe "kernel=$(uname -r)"
probe "cpus=$(nproc)"
probe "io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo absent)"
# A pure cgroup v2 hierarchy, as on the AutoSD image (nothing mounts v1 here).
if mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null; then
    probe "cgroup2_controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"
else
    probe "cgroup2_controllers=unavailable"
fi

if [ "$SCENARIO" = io-uring-disabled ]; then
    # io_uring off for everyone, root included: the orchestrator must refuse to start, with
    # the documented message and exit code (the host asserts both), and start nothing.
    timeout 30 /usr/bin/holden-orchestrator --config "$CONFIG" 2>>"$LOG"
    RC=$?
    say "orchestrator-exit=$RC"
    [ "$RC" -eq 1 ] || fail "io-uring-disabled: the orchestrator exited with $RC, expected 1"
    [ "$(count 'reason=spawned')" -eq 0 ] || fail "io-uring-disabled: a service was started"
    pass "io-uring-disabled the orchestrator refused to start (exit $RC), nothing started"
    echo "HOLDEN-VM-DONE"
    finish
fi
if [ "$SCENARIO" = cgroup-limits ]; then
    # Limits in the services' cgroups (docs/config.md, "Cgroup limits"): the orchestrator
    # enables the controllers under the root it is given and writes each service's files.
    CG=/sys/fs/cgroup/holden
    # QM's cgroup, with the controllers systemd's Delegate= would give it, and holden-agent
    # alone in it (an inner shell moves itself there, then becomes the agent).
    QMCG=/sys/fs/cgroup/qm
    echo "+memory +pids" >/sys/fs/cgroup/cgroup.subtree_control
    mkdir -p $QMCG
    unshare -p -f --mount-proc /bin/sh -c \
        "while :; do sh -c 'echo \$\$ > $QMCG/cgroup.procs && exec /usr/bin/holden-agent --socket /run/holden/qm/qm_orchestrator.sock'; usleep 100000; done" \
        2>>"$AGENT_LOG" &
    /usr/bin/holden-orchestrator --config /etc/holden/vm-cgroup.toml 2>>"$LOG" &
    ORCH=$!
    wait_count 'event=start ' 1 "orchestrator start"
    wait_count 'service=vm-weighted .*reason=spawned' 1 "vm-weighted start"
    W=$(last_pid vm-weighted)
    WEIGHT=$(cat $CG/vm-weighted/cpu.weight)
    CPUMAX=$(cat $CG/vm-weighted/cpu.max)
    MEMMAX=$(cat $CG/vm-hog/memory.max)
    PIDSMAX=$(cat $CG/vm-forks/pids.max)
    wait_count 'service=vm-io .*reason=spawned' 1 "vm-io start"
    IOWEIGHT=$(cat $CG/vm-io/io.weight)
    MEMHIGH=$(cat $CG/vm-io/memory.high)
    [ "$WEIGHT" = 50 ] || fail "cgroup-files: cpu.weight of vm-weighted is $WEIGHT, configured 50"
    [ "$CPUMAX" = "50000 100000" ] || fail "cgroup-files: cpu.max of vm-weighted is '$CPUMAX', configured 50%"
    [ "$MEMMAX" = 33554432 ] || fail "cgroup-files: memory.max of vm-hog is $MEMMAX, configured 32M"
    [ "$PIDSMAX" = 20 ] || fail "cgroup-files: pids.max of vm-forks is $PIDSMAX, configured 20"
    [ "$IOWEIGHT" = "default 200" ] || fail "cgroup-files: io.weight of vm-io is '$IOWEIGHT', configured 200"
    [ "$MEMHIGH" = 50331648 ] || fail "cgroup-files: memory.high of vm-io is $MEMHIGH, configured 48M"
    grep -q '^0::/holden/vm-weighted$' "/proc/$W/cgroup" \
        || fail "cgroup-files: vm-weighted $W is not in its cgroup: $(cat /proc/$W/cgroup)"
    pass "cgroup-files cpu.weight=$WEIGHT cpu.max='$CPUMAX' memory.max=$MEMMAX pids.max=$PIDSMAX io.weight='$IOWEIGHT' memory.high=$MEMHIGH subtree_control='$(cat $CG/cgroup.subtree_control)'"

    # The QM service's limits, written by the agent into the cgroup it made for it.
    wait_count 'service=vm-qm-limited .*reason=spawned' 1 "vm-qm-limited start"
    Q=$(last_pid vm-qm-limited)
    QDIR=$QMCG/services/vm-qm-limited
    QMEM=$(cat $QDIR/memory.max)
    QPIDS=$(cat $QDIR/pids.max)
    [ "$QMEM" = 25165824 ] || fail "qm-cgroup-limits: memory.max of vm-qm-limited is $QMEM, configured 24M"
    [ "$QPIDS" = 16 ] || fail "qm-cgroup-limits: pids.max of vm-qm-limited is $QPIDS, configured 16"
    grep -q '^0::/qm/services/vm-qm-limited$' "/proc/$Q/cgroup" \
        || fail "qm-cgroup-limits: vm-qm-limited $Q is not in its cgroup: $(cat /proc/$Q/cgroup)"
    [ "$(count 'qm-cgroup-refused')" -eq 0 ] || fail "qm-cgroup-limits: the orchestrator refused the QM cgroup"
    pass "qm-cgroup-limits vm-qm-limited $Q in $QDIR: memory.max=$QMEM pids.max=$QPIDS (written by the agent; qm subtree_control='$(cat $QMCG/cgroup.subtree_control)')"

    wait_count 'service=vm-hog .*reason=exited signal=SIGKILL' 1 "vm-hog OOM-killed"
    wait_count 'service=vm-hog .*reason=spawned' 2 "vm-hog restarted"
    OOM=$(sed -n 's/^oom_kill \([0-9]*\)$/\1/p' $CG/vm-hog/memory.events)
    [ "${OOM:-0}" -ge 1 ] || fail "oom-kill: memory.events of vm-hog: $(tr '\n' ' ' <$CG/vm-hog/memory.events)"
    alive "$ORCH" || fail "oom-kill: the orchestrator died"
    [ "$(last_pid vm-weighted)" = "$W" ] && alive "$W" || fail "oom-kill: vm-weighted was touched"
    pass "oom-kill vm-hog OOM-killed in its own cgroup (memory.events oom_kill $OOM) and restarted; the orchestrator and vm-weighted $W untouched"

    wait_count 'service=vm-forks .*reason=spawned' 1 "vm-forks start"
    tries=0
    until grep -q '^max [1-9]' $CG/vm-forks/pids.events; do
        tries=$((tries + 1))
        [ "$tries" -gt 300 ] && fail "pids-max: no refused fork: $(tr '\n' ' ' <$CG/vm-forks/pids.events)"
        usleep 100000
    done
    EVENTS=$(tr '\n' ' ' <$CG/vm-forks/pids.events)
    # busybox sh exits at a refused fork: then its exit waits for the rest of its tree (the
    # tree rule), whose size the orchestrator logs; a shell that went on stays within 20.
    tries=0
    while [ "$(count 'service=vm-forks .*reason=exited')" -lt 1 ] && [ "$tries" -lt 30 ]; do
        tries=$((tries + 1))
        usleep 100000
    done
    if [ "$(count 'service=vm-forks .*reason=exited')" -ge 1 ]; then
        PROCS=$(sed -n 's/.*service=vm-forks .*event=tree-remains .*procs=\([0-9]*\).*/\1/p' "$LOG" | head -n 1)
        [ -n "$PROCS" ] && [ "$PROCS" -lt 20 ] \
            || fail "pids-max: vm-forks exited with ${PROCS:-no} other processes in its cgroup, pids.max is 20"
        HOW="the shell exited at the refused fork and the $PROCS others of its tree were ended before its exit was reported"
    else
        CUR=$(cat $CG/vm-forks/pids.current)
        [ "$CUR" -le 20 ] || fail "pids-max: pids.current of vm-forks is $CUR, above pids.max 20"
        HOW="pids.current=$CUR"
    fi
    pass "pids-max the fork bomb was held at pids.max=20 ($EVENTS): $HOW"

    wait_count 'service=vm-stubborn .*reason=spawned' 1 "vm-stubborn start"
    tries=0
    until [ "$(wc -l <$CG/vm-stubborn/cgroup.procs)" -ge 3 ]; do
        tries=$((tries + 1))
        [ "$tries" -gt 300 ] && fail "tree-kill: vm-stubborn has $(wc -l <$CG/vm-stubborn/cgroup.procs) processes"
        usleep 100000
    done
    TREE=$(cat $CG/vm-stubborn/cgroup.procs | tr '\n' ' ')
    holdenctl stop vm-stubborn >/tmp/stop.txt 2>&1 || fail "tree-kill: holdenctl stop: $(cat /tmp/stop.txt)"
    wait_count 'service=vm-stubborn .*state=stopped' 1 "vm-stubborn stopped"
    for p in $TREE; do
        alive "$p" && fail "tree-kill: $p of vm-stubborn's tree ($TREE) outlived the stop"
    done
    [ "$(count 'service=vm-stubborn .*signal=SIGKILL target=cgroup')" -ge 1 ] \
        || fail "tree-kill: no SIGKILL to vm-stubborn's cgroup in the log"
    holdenctl start vm-stubborn >/tmp/start.txt 2>&1 || fail "tree-kill: holdenctl start: $(cat /tmp/start.txt)"
    wait_count 'service=vm-stubborn .*reason=spawned' 2 "vm-stubborn started again"
    usleep 500000
    S2=$(last_pid vm-stubborn)
    alive "$S2" || fail "tree-kill: vm-stubborn $S2 started after the kill did not stay up"
    if [ -e $CG/vm-stubborn/cgroup.kill ]; then HOW=cgroup.kill; else HOW="freeze and kill (no cgroup.kill before 5.14)"; fi
    pass "tree-kill the SIGTERM-proof tree ($TREE) ended by SIGKILL through $HOW after stop_timeout; started again as $S2, which stays up"

    kill -TERM "$ORCH"
    wait "$ORCH"
    RC=$?
    [ "$RC" -eq 0 ] || fail "cgroup-shutdown: orchestrator exited with $RC"
    for s in vm-hog vm-forks vm-weighted vm-stubborn; do
        [ -d "$CG/$s" ] && fail "cgroup-shutdown: $CG/$s is still there: $(cat $CG/$s/cgroup.procs | tr '\n' ' ')"
    done
    pass "cgroup-shutdown SIGTERM: exit 0, every service's cgroup empty and removed"
    echo "HOLDEN-VM-DONE"
    finish
fi
[ "$SCENARIO" = supervision ] || fail "unknown holden.scenario=$SCENARIO"

# The QM stand-in: PID 1 of a new PID + mount namespace is a shell loop that restarts the
# agent when it dies, as QM's systemd does (Restart=always), and reaps orphans.
unshare -p -f --mount-proc /bin/sh -c \
    'while :; do /usr/bin/holden-agent --socket /run/holden/qm/qm_orchestrator.sock; usleep 100000; done' \
    2>>"$AGENT_LOG" &
/usr/bin/holden-orchestrator --config "$CONFIG" 2>>"$LOG" &
ORCH=$!

wait_count 'event=start ' 1 "orchestrator start"
wait_count 'service=vm-local .*reason=spawned' 1 "local service start"
wait_count 'event=agent-up' 1 "agent connection"
wait_count 'service=vm-qm .*reason=spawned' 1 "QM service start"
Q1=$(last_pid vm-qm)
NSPID=$(grep '^NSpid:' "/proc/$Q1/status" | tr -s ' \t' ' ')
set -- $NSPID
[ "$#" -eq 3 ] || fail "QM service $Q1 is not one PID namespace below the orchestrator ($NSPID)"
pass "started orchestrator=$ORCH qm_service=$Q1 ($NSPID)"

# pidfs (6.9+) or not: the filesystem (statfs magic) of a pidfd the orchestrator holds.
for fd in /proc/$ORCH/fd/*; do
    link=$(readlink "$fd")
    case "$link" in
        *pidfd*)
            probe "pidfd_fs_magic=$(stat -f -c %t "$fd") path=$fd link=$link"
            break
            ;;
    esac
done

L1=$(last_pid vm-local)
kill -9 "$L1"
wait_count 'service=vm-local .*reason=spawned' 2 "local restart"
L2=$(last_pid vm-local)
[ "$L2" != "$L1" ] && alive "$L2" || fail "local restart: pid $L2 is not a new running process"
pass "local-restart killed $L1 (SIGKILL), restarted as $L2"

kill -9 "$Q1"
wait_count 'service=vm-qm .*reason=spawned' 2 "QM restart"
Q2=$(last_pid vm-qm)
[ "$Q2" != "$Q1" ] && alive "$Q2" || fail "QM restart: pid $Q2 is not a new running process"
pass "qm-restart killed $Q1 (SIGKILL), restarted through the agent as $Q2"

# Kernels before 6.15 have no PIDFD_INFO_EXIT: the exit status of a QM process is unknown
# and must be reported so, never invented.
if grep -q 'event=start .*pidfd_info_exit=no' "$LOG"; then
    [ "$(count 'service=vm-qm .*reason=exited status=unknown')" -ge 1 ] \
        || fail "exit-status: no 'status=unknown' for the QM exit on a kernel without PIDFD_INFO_EXIT"
    pass "exit-status QM exit reported as status=unknown (no PIDFD_INFO_EXIT on this kernel)"
else
    [ "$(count 'service=vm-qm .*reason=exited signal=SIGKILL')" -ge 1 ] \
        || fail "exit-status: QM exit not reported as signal=SIGKILL"
    pass "exit-status QM exit reported as signal=SIGKILL (PIDFD_INFO_EXIT)"
fi

A1=$(pidof holden-agent)
[ -n "$A1" ] || fail "agent: no holden-agent process"
UPS=$(count 'event=agent-up')
kill -9 $A1
wait_count 'event=agent-down' 1 "agent loss noticed"
wait_count 'event=agent-up' $((UPS + 1)) "agent reconnect"
alive "$Q2" || fail "agent-restart: QM service $Q2 died with the agent"
[ "$(count 'service=vm-qm .*reason=spawned')" -eq 2 ] || fail "agent-restart: the QM service was started again though it never died"
A2=$(pidof holden-agent)
[ -n "$A2" ] && [ "$A2" != "$A1" ] || fail "agent-restart: no new agent ($A1 -> $A2)"
pass "agent-restart agent $A1 killed (SIGKILL), $A2 reconnected; QM service $Q2 kept running, supervised"

kill -9 "$Q2"
wait_count 'service=vm-qm .*reason=spawned' 3 "QM restart after reconnect"
Q3=$(last_pid vm-qm)
alive "$Q3" || fail "qm-restart-after-reconnect: $Q3 not running"
pass "qm-restart-after-reconnect killed $Q2, restarted through the new agent as $Q3"

wait_count 'service=vm-crashy .*state=failed .*reason=start-limit' 1 "crash loop start limit"
DELAYS=$(sed -n 's/.*service=vm-crashy .*reason=exited.*next_delay_ms=\([0-9]*\).*/\1/p' "$LOG" | tr '\n' ' ')
pass "crash-loop restart delays (ms): $DELAYS then failed at the start limit"

if holdenctl status --help >/dev/null 2>&1; then
    holdenctl status >/tmp/status.txt 2>&1 || fail "holdenctl status: exit $?: $(cat /tmp/status.txt)"
    sed 's/^/holdenctl| /' /tmp/status.txt
    grep -q vm-local /tmp/status.txt && grep -q vm-qm /tmp/status.txt \
        || fail "holdenctl status does not list vm-local and vm-qm"
    pass "holdenctl-status lists the services"
else
    say "SKIP holdenctl status: 'holdenctl status --help' does not exit 0 (not implemented yet)"
fi

L3=$(last_pid vm-local)
kill -TERM "$ORCH"
wait "$ORCH"
RC=$?
[ "$RC" -eq 0 ] || fail "shutdown: orchestrator exited with $RC"
[ "$(count 'event=shutdown-complete')" -eq 1 ] || fail "shutdown: no event=shutdown-complete"
usleep 200000
alive "$L3" && fail "shutdown: local service $L3 still running"
alive "$Q3" && fail "shutdown: QM service $Q3 still running"
pass "shutdown SIGTERM: orchestrator exit 0, local $L3 and QM $Q3 stopped"

echo "HOLDEN-VM-DONE"
finish

#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try hydra/launcher=slurm before sending a study to a real one
# (docs/sweeps.md, "On one machine"). Everything it writes is under $RESATTN_SLURM_DIR (default
# ${TMPDIR:-/tmp}/resattn-slurm): slurm.conf, a munge key, state, logs, pid files. Its own munged socket and
# ports (16817/16818) leave a system munge or SLURM on this machine alone.
#
#   scripts/slurm_local.sh start    # start munged, slurmctld and slurmd; wait until the node is idle
#   export SLURM_CONF=... PATH=...  # the line start prints: the cluster's config, and its sacct (below)
#   scripts/slurm_local.sh status   # the node's state (exit 1 when the cluster is not running)
#   scripts/slurm_local.sh stop     # cancel its jobs, stop the three daemons it started, remove the folder
#
# One partition (debug) with the machine's cores and memory; proctrack/linuxproc and no cgroups, so it runs in
# a container; no accounting database (its own sacct answers submitit from slurmctld), jobs run as root.
set -euo pipefail

DIR=${RESATTN_SLURM_DIR:-${TMPDIR:-/tmp}/resattn-slurm}
export SLURM_CONF=$DIR/slurm.conf
DAEMONS=(slurmd slurmctld munged)  # stopped in this order: the node, the controller, then the authentication

refuse() {
    echo "slurm_local.sh: $*" >&2
    exit 2
}

alive() {  # the daemon $1 this script started is running
    [[ -s $DIR/$1.pid ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null
}

check_can_run() {
    [[ $(id -u) == 0 ]] || refuse "needs root (slurmd starts jobs as their user, munged and slurmd own their files): run it with sudo"
    local missing=()
    for cmd in munged mungekey slurmctld slurmd sbatch sinfo scontrol; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) || refuse "${missing[*]} not found: apt-get install slurm-wlm munge"
}

write_conf() {
    local host node cpus mem
    host=$(hostname -s)
    # slurmd -C: this machine's CPUs, sockets, cores, threads and memory, as a NodeName line
    node=$(slurmd -C | head -1)
    cpus=$(grep -o 'CPUs=[0-9]*' <<<"$node" | cut -d= -f2)
    mem=$(grep -o 'RealMemory=[0-9]*' <<<"$node" | cut -d= -f2)
    cat >"$SLURM_CONF" <<EOF
ClusterName=resattn-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
AuthInfo=socket=$DIR/munge.socket,cred_expire=5
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# a job without mem_gb gets its CPUs' share of the memory, not the whole node (which would run one job at a time)
DefMemPerCPU=$((mem / cpus))
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
# a requeued job may start again 5 s after it ended (cred_expire, default 120 s), picked up within 2 s
SchedulerParameters=sched_interval=2,bf_interval=2
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

write_sacct() {
    # submitit (hydra/launcher=slurm) learns that a job ended without a result (cancelled, killed) only from
    # `sacct -o JobID,State,NodeList --parsable2 -j ID...`, and sacct needs an accounting database this cluster
    # has not got: without one, the sweep would wait for such a job forever. This sacct answers those calls
    # from slurmctld's own records (scontrol keeps an ended job for MinJobAge, 300 s).
    mkdir -p "$DIR/bin"
    cat >"$DIR/bin/sacct" <<'SACCT'
#!/usr/bin/env bash
echo "JobID|State|NodeList"
while (($#)); do
    [[ $1 == -j ]] && scontrol show job -o "$2" 2>/dev/null | awk '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = substr($i, length(kv[1]) + 2) }
        id = f["JobId"]
        if (f["ArrayTaskId"] != "") id = f["ArrayJobId"] "_" (f["ArrayTaskId"] ~ /[-,]/ ? "[" f["ArrayTaskId"] "]" : f["ArrayTaskId"])
        print id "|" f["JobState"] "|" (f["NodeList"] == "(null)" ? "" : f["NodeList"])
        delete f
    }'
    shift
done
SACCT
    chmod +x "$DIR/bin/sacct"
}

wait_idle() {
    local host state=""
    host=$(hostname -s)
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
        [[ $state == idle ]] && return 0
        sleep 0.5
    done
    kill_daemons  # a start that failed leaves nothing running (a port taken by another SLURM, say); its logs stay
    echo "slurm_local.sh: node $host is '${state:-not answering}' after 30 s, not idle: see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
    exit 1
}

start() {
    check_can_run
    alive slurmctld && refuse "already running (SLURM_CONF=$SLURM_CONF); stop it first: scripts/slurm_local.sh stop"
    mkdir -p "$DIR/state" "$DIR/spool"
    chmod 700 "$DIR"  # munged refuses a key or socket in a folder others may write to
    [[ -f $DIR/munge.key ]] || mungekey --create --keyfile="$DIR/munge.key"
    munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed"
    write_conf
    write_sacct
    slurmctld -f "$SLURM_CONF" -i  # -i: ignore state a killed earlier cluster left in $DIR/state
    slurmd -f "$SLURM_CONF"
    wait_idle
    echo "SLURM $(sinfo --version | cut -d' ' -f2) up: partition debug, node $(hostname -s), $(sinfo -h -o %c) CPUs;" \
        "export SLURM_CONF=$SLURM_CONF PATH=$DIR/bin:\$PATH"
}

kill_daemons() {  # only those whose pid files are in $DIR: the ones this script started
    local name pid
    for name in "${DAEMONS[@]}"; do
        alive "$name" || continue
        pid=$(cat "$DIR/$name.pid")
        kill "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    done
}

stop() {
    check_can_run
    if alive slurmctld; then
        scancel --partition=debug 2>/dev/null || true  # jobs of this cluster only: it has one partition
        for _ in $(seq 60); do  # let their steps save and end (SIGTERM first, as scancel does)
            [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    kill_daemons
    # the folder goes only if this script made it: RESATTN_SLURM_DIR may name any folder
    grep -qs '^ClusterName=resattn-local$' "$SLURM_CONF" && rm -rf "$DIR"
    echo "stopped"
}

status() {
    if ! alive slurmctld; then
        echo "not running (no slurmctld of $DIR)"
        exit 1
    fi
    echo "SLURM_CONF=$SLURM_CONF"
    sinfo
    squeue
}

case ${1:-} in
    start | stop | status) "$1" ;;
    *) refuse "usage: scripts/slurm_local.sh start|stop|status" ;;
esac

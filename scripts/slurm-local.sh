#!/usr/bin/env bash
# scripts/slurm-local.sh start|stop|status: a real single-node SLURM cluster on this machine, to try
# regbench's cluster path (`python run.py -m hydra/launcher=slurm ...`, `make test-cluster`).
#   start   installs what is missing (Debian/Ubuntu packages: slurmctld slurmd slurm-client munge,
#           plus slurmdbd and mariadb-server for accounting), writes /etc/slurm/slurm.conf, starts
#           only the daemons that are not running (restarts slurmctld/slurmd when the config changed),
#           then waits until `sinfo` shows the node idle
#   stop    cancels the jobs still queued or running (SLURM_STOP_KEEP_JOBS=1 skips that), then stops
#           slurmd, slurmctld, slurmdbd, the private mariadbd and munged (munged only if start started
#           it), each by PID file and only if that PID still has the daemon's name; leaves config,
#           state and database in place for the next start
#   status  sinfo and the daemons' PIDs
# Both are idempotent. Needs root; no systemd. Environment:
#   SLURM_LOCAL_DIR      state, logs, PID files, database (default /var/spool/slurm-local)
#   SLURM_PARTITION      the default partition (default debug); a second one, "urgent", preempts it
#   SLURM_ACCOUNTING     1 (default): slurmdbd + a private MariaDB, so sacct works (submitit and
#                        regbench's launcher read a dead job's state from it); 0: no accounting
#   SLURM_DB_PORT        the private MariaDB's port on 127.0.0.1 (default 3307)
#   SLURM_START_TIMEOUT  seconds to wait for the idle node (default 60)
# Adapted from a start/stop pair known to work on this kind of machine (Debian bookworm, slurm 22.05).
set -uo pipefail

BASE=${SLURM_LOCAL_DIR:-/var/spool/slurm-local}

start() (
set -euo pipefail

PARTITION=${SLURM_PARTITION:-debug}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
DB_PORT=${SLURM_DB_PORT:-3307}
WAIT=${SLURM_START_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
NODE=$(hostname -s)
t0=$(date +%s)
log() { echo "slurm-local start: [$(( $(date +%s) - t0 ))s] $*"; }
alive() {  # alive PIDFILE: its process runs and has the daemon's name (a reused PID does not count)
  [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$(basename "$1" .pid | sed s/mysqld/mariadbd/)" ]
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local n=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "slurm-local start: $what not ready after ${n}x0.2s" >&2; return 1
}

[ "$(id -u)" = 0 ] || { echo "slurm-local start: must run as root" >&2; exit 1; }

# 1. packages: the minimal set (slurm-wlm would add ~35 plugin packages nobody here needs)
pkgs=(slurmctld slurmd slurm-client munge)
bins=(slurmctld slurmd sinfo munged)
if [ "$ACCOUNTING" = 1 ]; then pkgs+=(slurmdbd mariadb-server); bins+=(slurmdbd mariadbd); fi
missing=0
for b in "${bins[@]}"; do command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || missing=1; done
if [ "$missing" = 1 ]; then
  log "installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# 2. munge key (the munge package's postinst normally creates one)
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  mungekey --create --force 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi

# 3. directories and config
mkdir -p "$BASE"/{ctld,d,log,run} /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
mem_mb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
real_mem=$(( mem_mb * 90 / 100 ))   # a bit below the machine's: slurmd drains a node that has less
cpus=$(nproc)
def_mem=$(( real_mem / cpus ))      # a job without --mem gets this per CPU, not the whole node
if [ "$ACCOUNTING" = 1 ]; then
  acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
else
  acct="AccountingStorageType=accounting_storage/none"
fi
new_conf=$(cat <<EOF
# written by scripts/slurm-local.sh: a single node on localhost
ClusterName=local
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=20
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=${BASE}/run/slurmctld.pid
SlurmdPidFile=${BASE}/run/slurmd.pid
StateSaveLocation=${BASE}/ctld
SlurmdSpoolDir=${BASE}/d
SlurmctldLogFile=${BASE}/log/slurmctld.log
SlurmdLogFile=${BASE}/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=${def_mem}
${acct}
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=${BASE}/log/jobcomp.log
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
InactiveLimit=0
KillWait=10
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
Waittime=0
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 OverSubscribe=YES
PartitionName=urgent Nodes=${NODE} MaxTime=INFINITE State=UP PriorityTier=10
EOF
)
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  log "writing $CONF (node $NODE: $cpus CPUs, RealMemory=$real_mem MB; partitions $PARTITION, urgent)"
  printf '%s\n' "$new_conf" > "$CONF"
  conf_changed=1
fi

# 4. munged (as the munge user)
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already answers"
else
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --force
  touch "$BASE/run/munged.ours"       # stop stops munged only if we started it
  wait_for 10 munged sh -c 'munge -n | unmunge'
fi

# 5. accounting: a private MariaDB on 127.0.0.1:$DB_PORT, then slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  DB="$BASE/mysql"
  if [ ! -d "$DB/mysql" ]; then
    log "initialising MariaDB in $DB"
    mkdir -p "$DB"; chown mysql:mysql "$DB"
    mariadb-install-db --user=mysql --datadir="$DB" --skip-test-db \
      --auth-root-authentication-method=socket >"$BASE/log/mariadb-install.log" 2>&1
  fi
  chown mysql:mysql "$BASE/run"; chmod 0755 "$BASE/run"
  sql() { mariadb --no-defaults -uroot --socket="$BASE/run/mysqld.sock" "$@"; }
  if alive "$BASE/run/mysqld.pid"; then
    log "mariadbd already running (pid $(cat "$BASE/run/mysqld.pid"))"
  else
    log "starting mariadbd on 127.0.0.1:$DB_PORT"
    nohup /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB" \
      --socket="$BASE/run/mysqld.sock" --pid-file="$BASE/run/mysqld.pid" \
      --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
      --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
      --log-error="$BASE/log/mariadb.log" >/dev/null 2>&1 &
    wait_for 30 mariadbd sql -e 'SELECT 1'
  fi
  sql -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  new_dbd=$(cat <<EOF
# written by scripts/slurm-local.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=${BASE}/run/slurmdbd.pid
LogFile=${BASE}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=${DB_PORT}
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
EOF
)
  dbd_changed=0
  if [ ! -f "$DBD_CONF" ] || [ "$(cat "$DBD_CONF")" != "$new_dbd" ]; then
    printf '%s\n' "$new_dbd" > "$DBD_CONF"; dbd_changed=1
  fi
  chmod 0600 "$DBD_CONF"
  if alive "$BASE/run/slurmdbd.pid" && [ "$dbd_changed" = 1 ]; then
    log "slurmdbd.conf changed: restarting slurmdbd"
    kill -TERM "$(cat "$BASE/run/slurmdbd.pid")"; sleep 2
  fi
  if alive "$BASE/run/slurmdbd.pid"; then
    log "slurmdbd already running (pid $(cat "$BASE/run/slurmdbd.pid"))"
  else
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
    wait_for 30 "slurmdbd (port 6819)" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  fi
fi

# 6. slurmctld and slurmd (both daemonize and write their PID files); a changed config restarts them
for d in slurmctld slurmd; do
  pidfile="$BASE/run/$d.pid"
  if alive "$pidfile" && [ "$conf_changed" = 1 ]; then
    log "config changed: restarting $d"
    pid=$(cat "$pidfile"); kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if alive "$pidfile"; then
    log "$d already running (pid $(cat "$pidfile"))"
  else
    log "starting $d"
    "/usr/sbin/$d"
  fi
done

# 7. wait for the node to be idle (resume it if an earlier run left it down or drained)
state=
for _ in $(seq $(( WAIT * 2 ))); do
  state=$(sinfo -h -n "$NODE" -p "$PARTITION" -o '%T' 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mixed|allocated)
      if [ "$ACCOUNTING" = 1 ] && ! sacct -n -X -S now-1minutes >/dev/null 2>&1; then sleep 0.5; continue; fi
      log "node $NODE is $state; partition $PARTITION ready (accounting: $ACCOUNTING)"; sinfo; exit 0 ;;
    down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.5
done
echo "slurm-local start: node $NODE not idle after ${WAIT}s (state: ${state:-none}); see $BASE/log/" >&2
sinfo -R >&2 || true
tail -n 20 "$BASE"/log/slurmctld.log "$BASE"/log/slurmd.log >&2 || true
exit 1
)

stop() (

ours() { [ -s "$2" ] && [ "$(cat "/proc/$(cat "$2")/comm" 2>/dev/null)" = "$1" ]; }  # ours NAME PIDFILE

stop_daemons() {  # stop NAME=PIDFILE ...: SIGTERM to each, then wait for all (SIGKILL after 15 s)
  local spec name pidfile i pids=() names=() files=()
  for spec in "$@"; do
    name=${spec%%=*}; pidfile=${spec#*=}
    if ! ours "$name" "$pidfile"; then echo "slurm-local stop: $name: not running"; rm -f "$pidfile"; continue; fi
    pids+=("$(cat "$pidfile")"); names+=("$name"); files+=("$pidfile")
    kill -TERM "${pids[-1]}"
  done
  for i in "${!pids[@]}"; do
    for _ in $(seq 150); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "slurm-local stop: ${names[$i]} (${pids[$i]}) ignored SIGTERM for 15 s: SIGKILL"; kill -KILL "${pids[$i]}"
    fi
    rm -f "${files[$i]}"
    echo "slurm-local stop: ${names[$i]} (${pids[$i]}) stopped"
  done
}

if [ "${SLURM_STOP_KEEP_JOBS:-0}" != 1 ] && ours slurmctld "$BASE/run/slurmctld.pid"; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    echo "slurm-local stop: cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs
    for _ in $(seq 60); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
stop_daemons slurmd="$BASE/run/slurmd.pid" slurmctld="$BASE/run/slurmctld.pid"
stop_daemons slurmdbd="$BASE/run/slurmdbd.pid"
if [ -f "$BASE/run/munged.ours" ]; then
  stop_daemons mariadbd="$BASE/run/mysqld.pid" munged=/run/munge/munged.pid
  rm -f "$BASE/run/munged.ours"
else
  stop_daemons mariadbd="$BASE/run/mysqld.pid"
fi
)

status() {
  for d in munged slurmctld slurmd slurmdbd mysqld; do
    f="$BASE/run/$d.pid"; [ "$d" = munged ] && f=/run/munge/munged.pid
    if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then echo "$d: pid $(cat "$f")"; else echo "$d: not running"; fi
  done
  command -v sinfo >/dev/null && sinfo
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

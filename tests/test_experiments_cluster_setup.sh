#!/usr/bin/env bash
# Start single-node Slurm and SGE schedulers on a Debian 12 machine (as root), so that the real-scheduler
# tests in tests/test_experiments_cluster.py run instead of skipping:
#
#   sudo bash tests/test_experiments_cluster_setup.sh          # ~1-2 min: apt-get install + start daemons
#   export SLURM_CONF=/tmp/cnnlab-slurm/slurm.conf SGE_ROOT=/var/lib/gridengine SGE_CELL=default
#   .venv/bin/python -m pytest -q tests/test_experiments_cluster.py
#
# .ci/run calls it (as root, best effort) before the test suite. Safe to re-run.
set -euo pipefail
HOST="$(hostname)"
CPUS="$(nproc)"

apt-get update -qq
# ---------------------------------------------------------------------------- Slurm (+ munge)
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
SLURM_DIR=/tmp/cnnlab-slurm
mkdir -p "$SLURM_DIR"/state "$SLURM_DIR"/spool
cat > "$SLURM_DIR/slurm.conf" <<EOF
ClusterName=cnnlab
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MaxArraySize=10001
NodeName=$HOST CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge && chown munge:munge /run/munge
  su -s /bin/sh munge -c /usr/sbin/munged
fi
export SLURM_CONF="$SLURM_DIR/slurm.conf"
pgrep -x slurmctld >/dev/null || slurmctld -f "$SLURM_CONF"
pgrep -x slurmd >/dev/null || slurmd -f "$SLURM_CONF"

# ---------------------------------------------------------------------------- SGE (Son of Grid Engine 8.1.9)
for pkg in gridengine-common gridengine-client gridengine-master; do
  printf '%s shared/gridenginemaster string %s\n%s shared/gridenginecell string default\n%s shared/gridengineconfig boolean true\n' \
    "$pkg" "$HOST" "$pkg" "$pkg" | debconf-set-selections
done
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gridengine-master gridengine-exec gridengine-client >/dev/null
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
# The host name resolves to 127.0.0.1, which reverse-resolves to "localhost": tell SGE they are one host.
echo "localhost $HOST" > "$SGE_ROOT/$SGE_CELL/common/host_aliases"
pgrep -x sge_qmaster >/dev/null || /etc/init.d/gridengine-master start || true
sleep 3
pgrep -x sge_execd >/dev/null || /etc/init.d/gridengine-exec start || true
sleep 3
ED="$(mktemp -d)"
printf '#!/bin/sh\nsed -i "s/^min_uid .*/min_uid 0/; s/^min_gid .*/min_gid 0/" "$1"\n' > "$ED/conf"
printf '#!/bin/sh\nsed -i "s/^hostlist .*/hostlist localhost/; s/^slots .*/slots %s/; s|^shell .*|shell /bin/bash|; s/^pe_list .*/pe_list NONE/" "$1"\n' "$CPUS" > "$ED/queue"
printf '#!/bin/sh\nsed -i "s/^schedule_interval .*/schedule_interval 0:0:1/" "$1"\n' > "$ED/sched"
chmod +x "$ED"/*
EDITOR="$ED/conf" qconf -mconf >/dev/null
qconf -sql 2>/dev/null | grep -qx all.q || EDITOR="$ED/queue" qconf -aq all.q >/dev/null
qconf -rattr queue load_thresholds NONE all.q >/dev/null   # a busy 2-core machine must not put the queue in alarm
EDITOR="$ED/sched" qconf -msconf >/dev/null
qconf -as localhost >/dev/null 2>&1 || true
rm -rf "$ED"

sleep 2
echo "Slurm:"; sinfo
echo "SGE:"; qstat -f
echo "export SLURM_CONF=$SLURM_CONF SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL"

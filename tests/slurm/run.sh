#!/usr/bin/env bash
# The one-node Slurm cluster test of `gemscope top-examples --shard slurm`.
#
# On Debian, as root: installs slurmctld, slurmd, slurm-client and munge with apt when missing,
# starts munged, slurmctld and slurmd with a private configuration in a temporary directory
# (nothing under /etc is touched), submits a 4-task job array running top-examples on the tiny
# fixture, merges the parts, and compares the merged store with an unsharded run byte for byte.
# The daemons it started are stopped by pid on every exit path.
#
#   tests/slurm/run.sh            # builds target/debug/gemscope if needed
#   GEMSCOPE_BIN=path/to/gemscope tests/slurm/run.sh
#
# The last line is `slurm: 1 passed, 0 failed` (exit 0) or `slurm: 0 passed, 1 failed` (exit 1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FIX="$ROOT/tests/fixtures"
started=$(date +%s)
pids=()
WORK=$(mktemp -d /tmp/gemscope-slurm.XXXXXX)

finish() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        # Wait for each daemon to be gone (up to 10 s), then force it.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ "$status" -eq 0 ]; then
        rm -rf "$WORK"
        echo "slurm: 1 passed, 0 failed ($(( $(date +%s) - started )) s)"
    else
        echo "slurm: logs kept in $WORK" >&2
        for log in "$WORK"/*.log; do [ -f "$log" ] && { echo "== $log" >&2; tail -n 20 "$log" >&2; }; done
        echo "slurm: 0 passed, 1 failed"
    fi
    exit "$status"
}
trap finish EXIT
fail() { echo "slurm: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (it starts the Slurm daemons)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm: installing slurmctld slurmd slurm-client munge" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >&2
fi

BIN=${GEMSCOPE_BIN:-"$ROOT/target/debug/gemscope"}
if [ ! -x "$BIN" ]; then
    (cd "$ROOT" && cargo build --quiet) >&2
fi

# munge: a fresh key and a private socket.
dd if=/dev/urandom of="$WORK/munge.key" bs=1024 count=1 status=none
chmod 400 "$WORK/munge.key"
mkdir -m 700 "$WORK/munge"
munged --foreground --force --key-file="$WORK/munge.key" --socket="$WORK/munge/socket" \
    --pid-file="$WORK/munge/pid" --log-file="$WORK/munged.log" --seed-file="$WORK/munge/seed" \
    > "$WORK/munged.out.log" 2>&1 &
pids+=($!)

HOST=$(hostname -s)
CPUS=$(nproc)
mkdir -p "$WORK/state" "$WORK/spool"
export SLURM_CONF="$WORK/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=gemscope-test
SlurmctldHost=$HOST
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$WORK/munge/socket
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=512 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

for _ in $(seq 50); do [ -S "$WORK/munge/socket" ] && break; sleep 0.1; done
[ -S "$WORK/munge/socket" ] || fail "munged did not start"
slurmctld -D -i -f "$SLURM_CONF" > "$WORK/slurmctld.out.log" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" > "$WORK/slurmd.out.log" 2>&1 &
pids+=($!)

# Wait for the node to be up.
for _ in $(seq 300); do
    state=$(sinfo -h -N -o '%t' 2>/dev/null | head -n1 || true)
    case "$state" in idle|mix|alloc) break ;; esac
    sleep 0.2
done
case "${state:-}" in idle|mix|alloc) ;; *) fail "the node did not come up (state: ${state:-none})" ;; esac

ARGS=(top-examples --model "$FIX/tiny" --sae "$FIX/tiny/sae_res_L1.npz" --layer 1
      --corpus "$FIX/corpus.txt" --max-tokens 32 --top 5 --context 2 --batch-size 2)
mkdir -p "$WORK/parts"
job=$(sbatch --parsable --array=0-3 --output="$WORK/task-%a.log" --chdir="$WORK" \
    --wrap "$(printf '%q ' "$BIN" "${ARGS[@]}") --shard slurm --out $WORK/parts/part-\$SLURM_ARRAY_TASK_ID.jsonl")
job=${job%%;*}
echo "slurm: submitted job array $job" >&2

for _ in $(seq 600); do
    [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break
    sleep 0.2
done
[ -z "$(squeue -h -j "$job" 2>/dev/null)" ] || fail "job $job did not finish in 120 s"
for k in 0 1 2 3; do
    [ -s "$WORK/parts/part-$k.jsonl" ] || fail "task $k wrote no store (see task-$k.log)"
done

"$BIN" merge --out "$WORK/merged.jsonl" "$WORK"/parts/part-{0,1,2,3}.jsonl
"$BIN" "${ARGS[@]}" --out "$WORK/whole.jsonl"
cmp "$WORK/merged.jsonl" "$WORK/whole.jsonl" || fail "the merged store differs from the unsharded one"
echo "slurm: 4 array tasks merged byte-identical to the unsharded run" >&2

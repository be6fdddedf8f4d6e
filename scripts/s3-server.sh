#!/usr/bin/env bash
# Single-node Ceph radosgw S3 server on 127.0.0.1, for tests.
#
#   scripts/s3-server.sh start   # install if missing, wipe state, start, print env
#   scripts/s3-server.sh stop    # kill daemons, remove state
#   scripts/s3-server.sh env     # print the env lines of the running server
#
# One mon, one RAM-backed (memstore) OSD, one radosgw (beast). No systemd, no
# mgr, no cephx. See docs/s3-server.md.
set -euo pipefail

DIR=${FUNNEL_S3_DIR:-/tmp/funnel-s3}
PORT=${FUNNEL_S3_PORT:-7480}
MON_PORT=${FUNNEL_S3_MON_PORT:-3300}
ACCESS_KEY=${FUNNEL_S3_ACCESS_KEY:-funnel-test-key}
SECRET_KEY=${FUNNEL_S3_SECRET_KEY:-funnel-test-secret}
BUCKETS=${FUNNEL_S3_BUCKETS:-funnel-test}
MEM_BYTES=${FUNNEL_S3_MEM_BYTES:-$((3 * 1024 * 1024 * 1024))}
TIMEOUT=${FUNNEL_S3_TIMEOUT:-120}
CONF="$DIR/ceph.conf"
ENDPOINT="http://127.0.0.1:$PORT"

# start/stop wipe $DIR: refuse to touch anything that is not our state dir.
[[ $DIR == /?* && ( ! -e $DIR || -f $DIR/ceph.conf || -z $(ls -A "$DIR") ) ]] ||
  { echo "s3-server: refusing to use FUNNEL_S3_DIR=$DIR (not a state dir)" >&2; exit 1; }

log() { echo "s3-server: [${SECONDS}s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
ceph_cli() { ceph -c "$CONF" --connect-timeout 5 "$@"; }

install_if_missing() {
  local bin missing=0
  for bin in ceph ceph-mon ceph-osd radosgw radosgw-admin monmaptool curl; do
    command -v "$bin" >/dev/null || missing=1
  done
  [[ $missing == 0 ]] && return
  log "installing ceph packages (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    ceph-common ceph-mon ceph-osd radosgw curl >/dev/null
}

# Poll `cmd...` until it succeeds or the global deadline passes; on failure
# show the tail of the daemon log that most likely explains it.
wait_for() {
  local what=$1 logfile=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= DEADLINE)); then
      log "timed out waiting for $what; tail of $logfile:"
      tail -n 40 "$logfile" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  log "$what: ok"
}

mon_in_quorum() { ceph_cli quorum_status -f json | grep -q '"quorum_names":\["a"\]'; }
osd_up() { ceph_cli osd stat -f json | grep -q '"num_up_osds":1,'; }
# Anonymous "list my buckets": only rgw answers it with this XML.
rgw_up() { curl -sf "$ENDPOINT/" | grep -q ListAllMyBucketsResult; }

write_conf() {
  cat >"$CONF" <<EOF
[global]
fsid = $1
mon host = v2:127.0.0.1:$MON_PORT
mon initial members = a
# msgr2 only, loopback only: one mon port, nothing reachable from outside.
ms bind msgr1 = false
public addr = 127.0.0.1
cluster addr = 127.0.0.1
# Test cluster: no cephx anywhere, so no keyrings to create or distribute.
auth cluster required = none
auth service required = none
auth client required = none
# Keep every file of the cluster under the state dir (defaults are /var/...).
run dir = $DIR/run
crash dir = $DIR/crash
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
mon data = $DIR/mon/\$id
osd data = $DIR/osd/\$id
rgw data = $DIR/rgw
keyring = $DIR/keyring
# One OSD: replication factor 1 must be allowed (it is refused by default)
# and the "no redundancy" health warning is expected, not a problem.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
# rgw creates up to 8 pools; at the default 32 PGs each that exceeds the 250
# PGs per OSD limit and pool creation fails. No mgr runs, so no autoscaler.
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
# The mon refuses to start when its disk has <5% free; a CI /tmp may be full-ish.
mon data avail crit = 0
mon data avail warn = 0
# Only relevant to cephx, which is off; silences a HEALTH_WARN.
mon warn on insecure global id reclaim allowed = false
mon warn on insecure global id reclaim = false
# Commit map changes (each pool rgw creates) after 50 ms instead of 1 s.
paxos propose interval = 0.05
[osd]
# RAM-backed object store: no block device, nothing to format, fast start.
# Its size is the capacity the OSD reports. This is a soft cap: the full check
# runs every few seconds, and a full OSD makes PUTs hang instead of failing.
osd objectstore = memstore
memstore device bytes = $MEM_BYTES
[client.rgw]
# radosgw's built-in defaults set ms_mon_client_mode=secure, which the
# "none" auth method cannot provide: it would retry auth for rgw_init_timeout.
ms mon client mode = crc secure
rgw frontends = beast endpoint=127.0.0.1:$PORT
# 512 threads by default; a test server needs few.
rgw thread pool size = 32
# No background bucket-index resharding / usage logging during tests.
rgw dynamic resharding = false
rgw enable usage log = false
EOF
}

# A zombie has already released its ports and memory. (PID 1 here may be
# slow to reap the daemons, which are reparented to it.)
alive() { [[ -r /proc/$1/stat && $(awk '{print $3}' "/proc/$1/stat") != Z ]]; }

# Kill the daemons named by pid files and wait until they are gone.
stop_daemons() {
  local name pid pids=() i
  for name in client.rgw osd.0 mon.a; do
    [[ -f $DIR/run/$name.pid ]] || continue
    pid=$(<"$DIR/run/$name.pid")
    # A stale pid file may name an unrelated process by now.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) =~ ^(radosgw|ceph-osd|ceph-mon)$ ]] || continue
    # SIGKILL: the state is wiped anyway, and a clean stop is slow (the OSD
    # spends ~5 s dumping the memstore to disk; rgw waits for the OSD).
    kill -9 "$pid" 2>/dev/null && pids+=("$pid") && log "killed $name (pid $pid)"
  done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
  done
}

# Run a daemon (it daemonizes itself); its pre-fork output goes to a file
# that is shown, with its log, if it fails.
launch() {
  local name=$1; shift
  "$@" >"$DIR/log/$name.out" 2>&1 && return
  log "ERROR: $name failed:"
  tail -n 20 "$DIR/log/$name.out" "$DIR/log/$name.log" >&2 2>/dev/null || true
  exit 1
}

# curl < 8.x does not send x-amz-content-sha256, which S3 SigV4 requires (rgw
# answers SignatureDoesNotMatch without it), so it is passed explicitly.
create_bucket() {
  local code
  code=$(curl -s -o "$DIR/log/bucket-$1.out" -w '%{http_code}' \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT "$ENDPOINT/$1")
  if [[ $code == 409 ]] && grep -q BucketAlreadyOwnedByYou "$DIR/log/bucket-$1.out"; then
    code=200
  fi
  [[ $code == 200 ]] || die "PUT bucket $1: HTTP $code: $(cat "$DIR/log/bucket-$1.out")"
  log "bucket $1: ok"
}

start() {
  local fsid osd_uuid osd_id bucket first_bucket
  install_if_missing
  SECONDS=0
  DEADLINE=$TIMEOUT
  stop_daemons
  rm -rf "$DIR"
  # rgw would fail to bind, or worse, the readiness check would reach the
  # other server.
  ! curl -s -o /dev/null "$ENDPOINT/" || die "something already listens on $ENDPOINT"
  # On failure, free the RAM but keep $DIR for its logs.
  trap 'stop_daemons' EXIT
  mkdir -p "$DIR"/{run,crash,log,mon/a,osd/0,rgw}
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  write_conf "$fsid"
  touch "$DIR/keyring"

  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT]" \
    "$DIR/monmap" >/dev/null
  launch mon.a-mkfs ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap"
  launch mon.a ceph-mon -c "$CONF" -i a
  wait_for "mon quorum" "$DIR/log/mon.a.log" mon_in_quorum

  osd_id=$(ceph_cli osd new "$osd_uuid")
  [[ $osd_id == 0 ]] || die "expected osd id 0, got '$osd_id'"
  launch osd.0-mkfs ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid"
  launch osd.0 ceph-osd -c "$CONF" -i 0
  wait_for "osd up" "$DIR/log/osd.0.log" osd_up

  # rgw creates its pools and the default zone/zonegroup itself on first
  # start, and only daemonizes once that is done (or rgw_init_timeout passed).
  launch client.rgw radosgw -c "$CONF" -n client.rgw \
    --rgw-init-timeout "$((DEADLINE - SECONDS))"
  wait_for "rgw answering on $ENDPOINT" "$DIR/log/client.rgw.log" rgw_up

  launch user-create radosgw-admin -c "$CONF" user create --uid funnel --display-name funnel \
    --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY"
  for bucket in ${BUCKETS//,/ }; do
    first_bucket=${first_bucket:-$bucket}
    create_bucket "$bucket"
  done

  cat >"$DIR/env.sh" <<EOF
export AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY AWS_ENDPOINT_URL=$ENDPOINT AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true FUNNEL_S3_BUCKET=${first_bucket:-}
EOF
  trap - EXIT
  log "ready in ${SECONDS}s (env written to $DIR/env.sh)"
  cat "$DIR/env.sh"
}

case ${1:-} in
  start) start ;;
  stop)
    stop_daemons
    rm -rf "$DIR"
    ;;
  env)
    [[ -f $DIR/env.sh ]] || die "not running ($DIR/env.sh missing)"
    cat "$DIR/env.sh"
    ;;
  *)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac

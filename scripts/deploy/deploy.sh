#!/usr/bin/env bash
# Rolling operations on SFU hosts set up with scripts/deploy (systemd units sfu-dataplane and
# sfu-signaling, configuration in /etc/sfu/sfu.env). Run it from a machine that can ssh to the
# hosts (and reach their signaling port, unless --ssh-health). docs/deploy.md explains when to use
# which command.
#
#   deploy.sh [options] signaling HOST...   rolling restart of signaling, one host at a time:
#                                           (install the new binary,) restart, wait for /healthz,
#                                           wait --grace, next. Refuses while another host is
#                                           unhealthy. Clients resume elsewhere (close 1012).
#   deploy.sh [options] retire HOST...      replace nodes: drain the dataplane of every HOST
#                                           (SIGUSR1: no new rooms, running rooms finish), wait
#                                           until each has exited, stop its signaling, then run
#                                           --terminate-cmd. Start the new nodes first.
#   deploy.sh [options] dataplane HOST...   in-place dataplane upgrade, one host at a time:
#                                           (install the new binary,) drain, wait until it has
#                                           exited, start it again.
#
# Options:
#   --dry-run            print the commands instead of running them; every wait succeeds at once
#   --release-url URL    install URL/dataplane or URL/signaling (checked against URL/SHA256SUMS)
#                        into /usr/local/bin before restarting
#   --port N             signaling HTTP port (default 8080)
#   --ssh-health         check http://127.0.0.1:PORT/healthz on the host over ssh instead of
#                        http://HOST:PORT/healthz from here
#   --grace S            pause after an instance is healthy again (default 10)
#   --timeout S          how long a restarted signaling may take to become healthy (default 60)
#   --drain-timeout S    how long a drain may take (default 7200); then fail, or with --force
#                        stop the dataplane (its remaining calls end: `left`, reason shutdown)
#   --force              see --drain-timeout
#   --terminate-cmd CMD  run here after a host was retired, {host} replaced by the host, e.g.
#                        'aws ec2 terminate-instances --instance-ids $(./id-of {host})'
#   --ssh CMD            ssh command (default: ssh -o BatchMode=yes -o ConnectTimeout=10)
#   --sudo CMD           privilege prefix on the host (default: sudo; '' when ssh logs in as root)
#   -h, --help           this text
#
# HOST is what ssh accepts (user@host works; the user part is dropped for HTTP checks).
set -euo pipefail

dry=0
release_url=""
port=8080
ssh_health=0
grace=10
timeout=60
drain_timeout=7200
force=0
terminate_cmd=""
ssh_cmd="ssh -o BatchMode=yes -o ConnectTimeout=10"
sudo_cmd="sudo"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "deploy.sh: $*" >&2; exit 1; }
need_value() { [ $# -ge 2 ] || { echo "deploy.sh: $1 needs a value" >&2; exit 2; }; }
num() { [[ "$2" =~ ^[0-9]+$ ]] || { echo "deploy.sh: $1 needs a number, got '$2'" >&2; exit 2; }; }

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --release-url) need_value "$@"; release_url="${2%/}"; shift 2 ;;
    --port) need_value "$@"; num "$1" "$2"; port="$2"; shift 2 ;;
    --ssh-health) ssh_health=1; shift ;;
    --grace) need_value "$@"; num "$1" "$2"; grace="$2"; shift 2 ;;
    --timeout) need_value "$@"; num "$1" "$2"; timeout="$2"; shift 2 ;;
    --drain-timeout) need_value "$@"; num "$1" "$2"; drain_timeout="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --terminate-cmd) need_value "$@"; terminate_cmd="$2"; shift 2 ;;
    --ssh) need_value "$@"; ssh_cmd="$2"; shift 2 ;;
    --sudo) need_value "$@"; sudo_cmd="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; args+=("$@"); break ;;
    -*) echo "deploy.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[ ${#args[@]} -ge 2 ] || { usage >&2; exit 2; }
command="${args[0]}"
hosts=("${args[@]:1}")
case "$command" in
  signaling|retire|dataplane) ;;
  *) echo "deploy.sh: unknown command '$command' (signaling, retire, dataplane)" >&2; exit 2 ;;
esac

read -r -a ssh_argv <<< "$ssh_cmd"
exec 3>&1   # dry-run output goes to fd 3: the real stdout, also inside $(...)
log() { echo "[$(date +%H:%M:%S)] $*"; }

# remote HOST 'command': run one command as root on HOST (printed only, with --dry-run). The
# command is wrapped in sh -c '...' for sudo, so it must not contain single quotes.
remote() {
  local host="$1" cmd="$2"
  [ -n "$sudo_cmd" ] && cmd="$sudo_cmd sh -c '$cmd'"
  if [ "$dry" = 1 ]; then
    echo "+ ${ssh_argv[*]} $host \"$cmd\"" >&3
    return 0
  fi
  "${ssh_argv[@]}" "$host" "$cmd"
}

# remote_out HOST 'command': like remote, prints the command's output; in dry-run prints $3.
remote_out() {
  if [ "$dry" = 1 ]; then
    remote "$1" "$2"
    echo "${3:-}"
    return 0
  fi
  remote "$1" "$2"
}

healthy() {
  local host="$1" addr="${1#*@}"
  if [ "$dry" = 1 ]; then
    if [ "$ssh_health" = 1 ]; then
      remote "$host" "curl -fsS --max-time 2 http://127.0.0.1:$port/healthz"
    else
      echo "+ curl -fsS --max-time 2 http://$addr:$port/healthz" >&3
    fi
    return 0
  fi
  if [ "$ssh_health" = 1 ]; then
    remote "$host" "curl -fsS --max-time 2 http://127.0.0.1:$port/healthz" >/dev/null 2>&1
  else
    curl -fsS --max-time 2 "http://$addr:$port/healthz" >/dev/null 2>&1
  fi
}

pause() { if [ "$dry" = 1 ]; then echo "+ sleep $1" >&3; else sleep "$1"; fi; }

# install_binary HOST NAME: download NAME of the release to the host, verify, swap it in.
install_binary() {
  local host="$1" name="$2"
  [ -n "$release_url" ] || return 0
  log "$host: installing $name from $release_url"
  remote "$host" "set -e; d=\$(mktemp -d); cd \$d; curl -fsSL --retry 3 -o $name $release_url/$name; curl -fsSL --retry 3 -o SHA256SUMS $release_url/SHA256SUMS; grep \" $name\$\" SHA256SUMS | sha256sum -c -; install -m 0755 $name /usr/local/bin/$name.new; mv /usr/local/bin/$name.new /usr/local/bin/$name; rm -rf \$d"
}

# drain_start HOST: send SIGUSR1 to the dataplane; prints its pid.
drain_start() {
  local host="$1" pid
  pid="$(remote_out "$host" "systemctl show -p MainPID --value sfu-dataplane" 4242)"
  [ -n "$pid" ] && [ "$pid" != 0 ] || die "$host: sfu-dataplane is not running"
  log "$host: draining dataplane (pid $pid): no new rooms, waiting for its rooms to end"
  remote "$host" "systemctl kill -s USR1 sfu-dataplane"
  echo "$pid" > "$state/$host.pid"
}

# drain_wait HOST: wait until the drained dataplane has exited (it deregisters first).
drain_wait() {
  local host="$1" pid deadline now state_now cur next_note=0
  pid="$(cat "$state/$host.pid")"
  deadline=$(( $(date +%s) + drain_timeout ))
  while :; do
    state_now="$(remote_out "$host" "systemctl show -p ActiveState --value sfu-dataplane" inactive)"
    if [ "$state_now" = inactive ] || [ "$state_now" = failed ]; then
      log "$host: dataplane drained and exited ($state_now)"
      return 0
    fi
    cur="$(remote_out "$host" "systemctl show -p MainPID --value sfu-dataplane" "$pid")"
    if [ "$cur" != "$pid" ] && [ "$cur" != 0 ]; then
      die "$host: dataplane restarted during the drain (pid $pid -> $cur; crashed?): drain it again"
    fi
    now=$(date +%s)
    if [ "$now" -ge "$deadline" ]; then
      if [ "$force" = 1 ]; then
        log "$host: drain still running after ${drain_timeout}s: stopping the dataplane (--force)"
        remote "$host" "systemctl stop sfu-dataplane"
        return 0
      fi
      die "$host: drain still running after ${drain_timeout}s (left draining; rerun with --force to stop it)"
    fi
    if [ "$now" -ge "$next_note" ]; then
      log "$host: still draining ($(( deadline - now ))s left)"
      next_note=$(( now + 60 ))
    fi
    sleep 5
  done
}

wait_healthy() {
  local host="$1" deadline
  deadline=$(( $(date +%s) + timeout ))
  until healthy "$host"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$host: /healthz not OK within ${timeout}s"
    sleep 1
  done
}

state="$(mktemp -d)"
trap 'rm -rf "$state"' EXIT
[ "$dry" = 1 ] && log "dry run: printing commands only"

case "$command" in
  signaling)
    for h in "${hosts[@]}"; do
      for o in "${hosts[@]}"; do
        [ "$o" = "$h" ] && continue
        healthy "$o" || die "refusing to restart $h: $o is not healthy"
      done
      install_binary "$h" signaling
      log "$h: restarting signaling (WebSockets close with 1012, clients resume elsewhere)"
      remote "$h" "systemctl restart sfu-signaling"
      wait_healthy "$h"
      log "$h: signaling healthy; waiting ${grace}s"
      pause "$grace"
    done
    log "signaling rolling restart complete (${#hosts[@]} hosts)"
    ;;
  retire)
    # Drain all at once (the survivors take the new rooms), then wait for each.
    for h in "${hosts[@]}"; do drain_start "$h"; done
    for h in "${hosts[@]}"; do
      drain_wait "$h"
      log "$h: stopping signaling (take the host out of the load balancer first)"
      remote "$h" "systemctl stop sfu-signaling"
      remote "$h" "systemctl disable sfu-dataplane sfu-signaling"
      if [ -n "$terminate_cmd" ]; then
        cmd="${terminate_cmd//\{host\}/${h#*@}}"
        log "$h: $cmd"
        if [ "$dry" = 1 ]; then echo "+ $cmd" >&3; else bash -c "$cmd"; fi
      fi
    done
    log "retired ${#hosts[@]} hosts"
    ;;
  dataplane)
    for h in "${hosts[@]}"; do
      install_binary "$h" dataplane
      drain_start "$h"
      drain_wait "$h"
      log "$h: starting dataplane"
      remote "$h" "systemctl start sfu-dataplane"
      pause 3
      st="$(remote_out "$h" "systemctl show -p ActiveState --value sfu-dataplane" active)"
      [ "$st" = active ] || die "$h: dataplane did not start ($st): journalctl -u sfu-dataplane"
      wait_healthy "$h"
      log "$h: dataplane serving again; waiting ${grace}s"
      pause "$grace"
    done
    log "dataplane upgrade complete (${#hosts[@]} hosts)"
    ;;
esac

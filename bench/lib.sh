# Shared by bench/run.sh and bench/cluster.sh (sourced).

# wait_port PORT: until something listens on 127.0.0.1:PORT (5 s at most).
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2
  return 1
}

# require_free_port PORT: fail when something already listens on 127.0.0.1:PORT — a server left
# from an earlier run would be measured instead (or beside: uWebSockets.js binds with
# SO_REUSEPORT, so a second one shares the port and each gets half of the connections).
require_free_port() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "port $1 is taken: a server left from an earlier run?" >&2
    return 1
  fi
}

# stop_server PID: stop a server and return once it is gone. `wait` only works for children;
# a server started in a command substitution is not one, and one still shutting down holds its
# port: the next server would fail to bind while `wait_port` saw the old one listening.
stop_server() {
  kill "$1" 2>/dev/null || return 0
  wait "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.1; done
}

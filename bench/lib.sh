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

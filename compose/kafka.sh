#!/usr/bin/env bash
# Local Apache Kafka (4.x, KRaft, single node) without Docker, for tests and CI.
#
#   bash compose/kafka.sh fetch    copy the broker jars from Maven Central (cached)
#   bash compose/kafka.sh start    format fresh storage, start the broker, wait for metadata
#   bash compose/kafka.sh status   exit 0 if running and answering metadata requests
#   bash compose/kafka.sh stop     TERM (then KILL) the broker by PID
#
# `start` prints `KAFKA_BOOTSTRAP=127.0.0.1:PORT` on stdout when the broker answers a real
# Metadata request (compose/wait_for_kafka.py, aiokafka); everything else goes to stderr.
#
# Settings (environment):
#   TRAIL_KAFKA_HOME               jar cache             (default ~/.cache/trail/kafka)
#   TRAIL_KAFKA_PORT               client listener port  (default 19092)
#   TRAIL_KAFKA_CONTROLLER_PORT    KRaft controller port (default TRAIL_KAFKA_PORT + 1)
#   TRAIL_KAFKA_DATA               per-run data dir      (default /tmp/trail-kafka-$PORT)
#   TRAIL_KAFKA_START_TIMEOUT      seconds to wait for readiness (default 90)
#   TRAIL_KAFKA_STOP_TIMEOUT       seconds between TERM and KILL (default 30)
#   TRAIL_KAFKA_HEAP_OPTS          default "-Xms512m -Xmx1g"
#   TRAIL_KAFKA_JAVA_OPTS          extra JVM options for the broker
#   TRAIL_PYTHON                   Python with aiokafka for the readiness probe
#                                  (default .venv/bin/python, then python3)
#   JAVA_HOME / MVN                java and mvn to use (default: from PATH)
#
# Topics are auto-created (auto.create.topics.enable=true, num.partitions=4); the app's topics
# are events, events.dlq, scores and trending (see compose/docker-compose.yml).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"
PROBE="$SCRIPT_DIR/wait_for_kafka.py"

KAFKA_HOME="${TRAIL_KAFKA_HOME:-$HOME/.cache/trail/kafka}"
LIBS="$KAFKA_HOME/libs"
MARKER="$LIBS/.trail-fetch-complete"

HOST=127.0.0.1
PORT="${TRAIL_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${TRAIL_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
DATA="${TRAIL_KAFKA_DATA:-/tmp/trail-kafka-$PORT}"
START_TIMEOUT="${TRAIL_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${TRAIL_KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${TRAIL_KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"
EXTRA_JAVA_OPTS="${TRAIL_KAFKA_JAVA_OPTS:-}"

PID_FILE="$DATA/kafka.pid"
LOG_FILE="$DATA/kafka.log"
PROPS="$DATA/server.properties"
LOG4J="$DATA/log4j2.properties"
LOG_DIRS="$DATA/kraft-logs"
BOOTSTRAP="$HOST:$PORT"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --------------------------------------------------------------------------- tools
find_java() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        JAVA="$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        JAVA="$(command -v java)"
    else
        die "java not found (need Java 17+ for Kafka 4.x). Install a JDK/JRE 17+ (e.g.
       apt-get install openjdk-17-jre-headless) or set JAVA_HOME."
    fi
    local line major
    line="$("$JAVA" -version 2>&1 | head -n 1)"
    major="$(sed -E 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/' <<<"$line")"
    # Java 8 and older report "1.8.0_x".
    if [[ "${major%% *}" == 1 ]]; then major="${major##* }"; else major="${major%% *}"; fi
    if ! [[ "$major" =~ ^[0-9]+$ ]] || ((major < 17)); then
        die "Kafka 4.x needs Java 17+, but $JAVA reports: $line"
    fi
}

find_mvn() {
    MVN_BIN="${MVN:-}"
    if [[ -z "$MVN_BIN" ]]; then
        MVN_BIN="$(command -v mvn 2>/dev/null || true)"
    fi
    if [[ -z "$MVN_BIN" ]]; then
        die "mvn not found: it is needed once to fetch the Kafka jars from Maven Central
       (install Maven 3.6+, e.g. apt-get install maven, or set MVN=/path/to/mvn).
       Alternatively copy the jars of the Kafka $(kafka_version) distribution (its libs/) into
       $LIBS and run: echo manual >$MARKER"
    fi
}

find_python() {
    # Prints a Python that can import aiokafka, or nothing.
    local candidate
    for candidate in "${TRAIL_PYTHON:-}" "$REPO_ROOT/.venv/bin/python" python3; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import aiokafka' >/dev/null 2>&1; then
            printf '%s\n' "$candidate"
            return 0
        fi
        if [[ -n "${TRAIL_PYTHON:-}" && "$candidate" == "$TRAIL_PYTHON" ]]; then
            log "warning: TRAIL_PYTHON=$TRAIL_PYTHON cannot import aiokafka"
        fi
    done
    return 0
}

kafka_version() {
    sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n 1
}

pom_digest() {
    # The marker records which pom the cache was built from, so a version bump re-fetches.
    sha256sum "$POM" | cut -d' ' -f1
}

# --------------------------------------------------------------------------- fetch
fetch_is_complete() {
    # The marker holds the pom's digest ("manual" for hand-copied jars) and is written last.
    local mark
    [[ -f "$MARKER" ]] || return 1
    mark="$(cat "$MARKER")"
    [[ "$mark" == "$(pom_digest)" || "$mark" == manual ]] &&
        compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null
}

cmd_fetch() {
    if fetch_is_complete; then
        log "jars already fetched: $LIBS (Kafka $(kafka_version))"
        return 0
    fi
    find_mvn
    mkdir -p "$KAFKA_HOME"
    # One fetch at a time per cache (e.g. two test sessions starting at once).
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$KAFKA_HOME/.fetch.lock"
        flock 8
        if fetch_is_complete; then
            log "jars fetched meanwhile by another process: $LIBS"
            exec 8>&-
            return 0
        fi
    fi
    rm -rf "$KAFKA_HOME"/libs.tmp.* # left by an interrupted fetch
    local version tmp t0
    version="$(kafka_version)"
    t0=$SECONDS
    # Download into a temporary dir, then swap it in: an interrupted fetch leaves no marker
    # and no half-filled libs/, and is simply retried next time.
    tmp="$(mktemp -d "$KAFKA_HOME/libs.tmp.XXXXXX")"
    log "fetching Apache Kafka $version jars from Maven Central into $LIBS ..."
    if ! "$MVN_BIN" -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$KAFKA_HOME/fetch.log" 2>&1; then
        rm -rf "$tmp"
        tail -n 40 "$KAFKA_HOME/fetch.log" >&2
        die "mvn dependency:copy-dependencies failed, full output in $KAFKA_HOME/fetch.log
       (is Maven Central reachable? a proxy or mirror goes in ~/.m2/settings.xml)"
    fi
    if ! compgen -G "$tmp/kafka_2.13-$version.jar" >/dev/null; then
        rm -rf "$tmp"
        die "mvn finished but kafka_2.13-$version.jar is missing from the copied jars"
    fi
    chmod 755 "$tmp"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    pom_digest >"$MARKER"
    log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) \
in $((SECONDS - t0))s"
    exec 8>&-
}

# --------------------------------------------------------------------------- process helpers
read_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [[ -n "$pid" ]] || return 1
    printf '%s\n' "$pid"
}

is_alive() {
    # kill -0 also succeeds for a zombie (a broker that died while this shell is its parent).
    local pid="$1" state
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/stat" ]]; then
        state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null || true)"
        [[ "$state" != Z ]] || return 1
    fi
    return 0
}

is_our_broker() {
    # True if PID is alive and is the kafka.Kafka JVM started with this data dir's config.
    local pid="$1" cmdline
    is_alive "$pid" || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
        [[ "$cmdline" == *kafka.Kafka* && "$cmdline" == *"$PROPS"* ]] || return 1
    fi
    return 0
}

running_pid() {
    # Prints the broker PID if our broker is running; removes a stale pid file.
    local pid
    pid="$(read_pid)" || return 1
    if is_our_broker "$pid"; then
        printf '%s\n' "$pid"
        return 0
    fi
    log "removing stale pid file $PID_FILE (pid $pid is not running this broker)"
    rm -f "$PID_FILE"
    return 1
}

port_in_use() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

log_tail() {
    if [[ -f "$LOG_FILE" ]]; then
        log "---- last 60 lines of $LOG_FILE ----"
        tail -n 60 "$LOG_FILE" >&2
        log "---- end of broker log ----"
    else
        log "(no broker log at $LOG_FILE)"
    fi
}

# Probe with a short deadline. Returns 0 if the broker answered a Metadata request
# (with "--coordinators": and has group/transaction coordinators, i.e. their topics exist).
probe() {
    local seconds="$1"
    shift
    if [[ -n "$PYTHON" ]]; then
        "$PYTHON" "$PROBE" "$BOOTSTRAP" --timeout "$seconds" "$@" 2>/dev/null
    else
        # No aiokafka: fall back to the broker's own "started" line (logged once the broker
        # has registered with the controller and opened its listeners), plus a TCP check.
        if grep -q 'Kafka Server started' "$LOG_FILE" 2>/dev/null && port_in_use "$PORT"; then
            return 0
        fi
        sleep 0.5
        return 1
    fi
}

# --------------------------------------------------------------------------- config
write_config() {
    cat >"$PROPS" <<EOF
# Written by compose/kafka.sh: single-node KRaft, combined broker + controller.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$LOG_DIRS

num.partitions=4
auto.create.topics.enable=true
delete.topic.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Small machine (2 cores): few threads.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
EOF
    cat >"$LOG4J" <<'EOF'
# Written by compose/kafka.sh: everything to stdout (redirected to kafka.log).
status = warn
# Kafka logs its own shutdown from a JVM hook: keep log4j2 alive until the JVM exits.
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

random_cluster_id() {
    # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not starting with '-'.
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* && ${#id} -eq 22 ]] && break
    done
    printf '%s\n' "$id"
}

# --------------------------------------------------------------------------- start
wait_ready() {
    # Wait until the broker PID answers metadata, or it dies, or START_TIMEOUT passes.
    local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! is_alive "$pid"; then
            log "broker process $pid exited during startup"
            return 1
        fi
        if probe 3; then
            return 0
        fi
    done
    log "broker did not answer a metadata request on $BOOTSTRAP within ${START_TIMEOUT}s"
    return 1
}

cmd_start() {
    find_java
    PYTHON="$(find_python)"
    if [[ -z "$PYTHON" ]]; then
        log "warning: no Python with aiokafka (set TRAIL_PYTHON or create .venv); readiness" \
            "falls back to the broker's 'Kafka Server started' log line"
    fi

    local pid
    if pid="$(running_pid)"; then
        if probe 5; then
            log "already running (pid $pid) and answering on $BOOTSTRAP"
            echo "KAFKA_BOOTSTRAP=$BOOTSTRAP"
            return 0
        fi
        log "already running (pid $pid) but not answering yet; waiting up to ${START_TIMEOUT}s"
        if wait_ready "$pid"; then
            echo "KAFKA_BOOTSTRAP=$BOOTSTRAP"
            return 0
        fi
        log_tail
        die "broker pid $pid is running but not answering; try: bash $0 stop"
    fi

    cmd_fetch

    local p
    for p in "$PORT" "$CONTROLLER_PORT"; do
        if port_in_use "$p"; then
            die "port $HOST:$p is already in use by another process; choose other ports with
       TRAIL_KAFKA_PORT / TRAIL_KAFKA_CONTROLLER_PORT"
        fi
    done

    local t0=$SECONDS
    mkdir -p "$DATA"
    # Fresh storage every run: a new cluster id, formatted once.
    rm -rf "$LOG_DIRS"
    rm -f "$LOG_FILE"
    write_config
    local cluster_id
    cluster_id="$(random_cluster_id)"
    log "formatting $LOG_DIRS (cluster id $cluster_id)"
    if ! "$JAVA" -Xshare:auto -XX:TieredStopAtLevel=1 -Xmx256m \
        -Dlog4j2.configurationFile="$LOG4J" -cp "$LIBS/*" \
        kafka.tools.StorageTool format --standalone \
        -t "$cluster_id" -c "$PROPS" >"$DATA/format.log" 2>&1; then
        cat "$DATA/format.log" >&2
        die "kafka.tools.StorageTool format failed"
    fi

    log "starting Kafka $(kafka_version) on $BOOTSTRAP (controller $HOST:$CONTROLLER_PORT," \
        "data $DATA)"
    # setsid: own session, so a Ctrl-C in the calling terminal does not reach the broker.
    # The inner shell writes its own PID, then execs java: the PID file is the JVM's.
    # shellcheck disable=SC2016,SC2086
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
        "$JAVA" $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        $EXTRA_JAVA_OPTS \
        -Dlog4j2.configurationFile="$LOG4J" -Dkafka.logs.dir="$DATA" \
        -cp "$LIBS/*" kafka.Kafka "$PROPS" \
        >"$LOG_FILE" 2>&1 </dev/null &

    # Wait (briefly) for the PID file written by the child.
    local i
    for ((i = 0; i < 100; i++)); do
        pid="$(read_pid)" && break
        sleep 0.05
    done
    [[ -n "${pid:-}" ]] || die "broker did not write its pid file $PID_FILE"

    if ! wait_ready "$pid"; then
        log_tail
        stop_pid "$pid" 10 || true
        rm -f "$PID_FILE"
        die "Kafka failed to start (log: $LOG_FILE)"
    fi
    # Create __consumer_offsets / __transaction_state now (FindCoordinator), so the first
    # consumer group does not wait for them.
    if [[ -n "$PYTHON" ]] && ! probe 30 --coordinators; then
        log_tail
        stop_pid "$pid" 10 || true
        rm -f "$PID_FILE"
        die "Kafka answers metadata but has no group/transaction coordinator (log: $LOG_FILE)"
    fi
    log "ready in $((SECONDS - t0))s (pid $pid, log $LOG_FILE)"
    echo "KAFKA_BOOTSTRAP=$BOOTSTRAP"
}

# --------------------------------------------------------------------------- stop / status
stop_pid() {
    local pid="$1" timeout="$2" deadline
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$((SECONDS + timeout))
    while is_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            log "pid $pid still alive after ${timeout}s; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        log "not running (no live broker for $DATA)"
        return 0
    fi
    log "stopping broker pid $pid"
    stop_pid "$pid" "$STOP_TIMEOUT"
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "stopped (data $DATA)"
        return 3
    fi
    PYTHON="$(find_python)"
    if probe 5; then
        echo "running pid=$pid KAFKA_BOOTSTRAP=$BOOTSTRAP"
        return 0
    fi
    echo "not answering pid=$pid (bootstrap $BOOTSTRAP, log $LOG_FILE)"
    return 1
}

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        fetch) cmd_fetch ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"

#!/usr/bin/env bash
# Local Apache Kafka (4.x, KRaft, single node) without Docker, for tests and CI.
#
#   bash compose/kafka.sh fetch    copy the broker jars from Maven Central (cached)
#   bash compose/kafka.sh start    format fresh storage, start the broker, wait for metadata
#   bash compose/kafka.sh start --secure
#                                  the same, plus a SASL_SSL listener (see "Secured listener")
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
#   TRAIL_KAFKA_SECURE             1: as `start --secure`
#   TRAIL_KAFKA_SECURE_PORT        SASL_SSL listener port (default TRAIL_KAFKA_PORT + 2)
#   TRAIL_KAFKA_SASL_USERNAME      its user (default trail)
#   TRAIL_KAFKA_SASL_PASSWORD      its password (default: random, written to the password file)
#
# Secured listener (`start --secure`): beside the plain listener (which the broker itself and the
# readiness probe keep using), a SASL_SSL listener on TRAIL_KAFKA_SECURE_PORT that accepts
# SCRAM-SHA-512 and PLAIN for one user. Each start makes a throwaway CA and a broker certificate
# for 127.0.0.1/localhost with openssl (in $DATA/tls, valid 30 days); `start` then also prints
#   KAFKA_SECURE_BOOTSTRAP=127.0.0.1:PORT   KAFKA_SSL_CAFILE=.../tls/ca.pem
#   KAFKA_SASL_MECHANISMS=SCRAM-SHA-512,PLAIN   KAFKA_SASL_USERNAME=trail
#   KAFKA_SASL_PASSWORD_FILE=.../tls/sasl-password
# and it returns only once a client with those credentials is served on that listener. A client
# uses them as TRAIL_SECURITY_PROTOCOL=SASL_SSL, TRAIL_SASL_MECHANISM, TRAIL_SASL_USERNAME,
# TRAIL_SASL_PASSWORD and TRAIL_SSL_CAFILE.
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
case "${TRAIL_KAFKA_SECURE:-0}" in
    1 | true | yes) SECURE=1 ;;
    0 | false | no | "") SECURE=0 ;;
    *) SECURE=invalid ;;
esac
SECURE_PORT="${TRAIL_KAFKA_SECURE_PORT:-$((PORT + 2))}"
SASL_USERNAME="${TRAIL_KAFKA_SASL_USERNAME:-trail}"
SASL_MECHANISMS=(SCRAM-SHA-512 PLAIN)

PID_FILE="$DATA/kafka.pid"
LOG_FILE="$DATA/kafka.log"
PROPS="$DATA/server.properties"
LOG4J="$DATA/log4j2.properties"
LOG_DIRS="$DATA/kraft-logs"
BOOTSTRAP="$HOST:$PORT"
TLS_DIR="$DATA/tls"
CA_FILE="$TLS_DIR/ca.pem"
PASSWORD_FILE="$TLS_DIR/sasl-password"
# What `start --secure` printed, printed again by a later `start` of the running broker.
SECURE_INFO="$DATA/secure.env"
SECURE_BOOTSTRAP="$HOST:$SECURE_PORT"

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

probe_secure() {
    # One authenticated Metadata request per SASL mechanism on the SASL_SSL listener: returns
    # 0 once each is served, 1 (with the probe's reason on stderr) at the deadline.
    local seconds="$1" mechanism
    if [[ -z "$PYTHON" ]]; then
        port_in_use "$SECURE_PORT"
        return
    fi
    for mechanism in "${SASL_MECHANISMS[@]}"; do
        "$PYTHON" "$PROBE" "$SECURE_BOOTSTRAP" --timeout "$seconds" \
            --security-protocol SASL_SSL --sasl-mechanism "$mechanism" \
            --sasl-username "$SASL_USERNAME" --sasl-password-file "$PASSWORD_FILE" \
            --ssl-cafile "$CA_FILE" || return 1
    done
}

# --------------------------------------------------------------------------- secured listener
check_secret() {
    # Values go into server.properties, a JAAS line and a --add-scram argument unquoted.
    [[ "$2" =~ ^[A-Za-z0-9._~-]{1,128}$ ]] ||
        die "$1 may only hold letters, digits and ._~- (1 to 128 characters)"
}

random_secret() {
    head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24
}

make_tls() {
    # A throwaway CA and a broker certificate signed by it (EC P-256, SAN 127.0.0.1 and
    # localhost, which clients verify), packed with its chain into a PKCS12 keystore.
    command -v openssl >/dev/null 2>&1 || die "openssl not found (needed by start --secure)"
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR"
    chmod 700 "$TLS_DIR"
    STORE_PASSWORD="$(random_secret)"
    local ext="$TLS_DIR/broker.ext" err="$TLS_DIR/openssl.log"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectKeyIdentifier=hash" \
        "authorityKeyIdentifier=keyid,issuer" >"$ext"
    if ! {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=TRAIL test CA $(random_secret | head -c 8)" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$TLS_DIR/ca.key" -out "$CA_FILE" &&
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -subj "/CN=localhost" -keyout "$TLS_DIR/broker.key" -out "$TLS_DIR/broker.csr" &&
            openssl x509 -req -in "$TLS_DIR/broker.csr" -CA "$CA_FILE" -CAkey "$TLS_DIR/ca.key" \
                -CAcreateserial -days 30 -extfile "$ext" -out "$TLS_DIR/broker.pem" &&
            openssl pkcs12 -export -name broker -in "$TLS_DIR/broker.pem" \
                -inkey "$TLS_DIR/broker.key" -certfile "$CA_FILE" \
                -passout "pass:$STORE_PASSWORD" -out "$TLS_DIR/broker.p12"
    } >"$err" 2>&1; then
        cat "$err" >&2
        die "openssl could not make the test certificates (log: $err)"
    fi
    # The CA's key is not needed again: nothing else can be signed with it.
    rm -f "$TLS_DIR/ca.key" "$TLS_DIR/ca.srl" "$TLS_DIR/broker.csr" "$ext"
    if [[ -n "${TRAIL_KAFKA_SASL_PASSWORD:-}" ]]; then
        printf '%s' "$TRAIL_KAFKA_SASL_PASSWORD" >"$PASSWORD_FILE"
    else
        random_secret >"$PASSWORD_FILE"
    fi
    chmod 600 "$PASSWORD_FILE"
    SASL_PASSWORD="$(cat "$PASSWORD_FILE")"
    check_secret TRAIL_KAFKA_SASL_PASSWORD "$SASL_PASSWORD"
}

mechanism_list() {
    local IFS=,
    printf '%s\n' "${SASL_MECHANISMS[*]}"
}

write_secure_info() {
    cat >"$SECURE_INFO" <<EOF
KAFKA_SECURE_BOOTSTRAP=$SECURE_BOOTSTRAP
KAFKA_SSL_CAFILE=$CA_FILE
KAFKA_SASL_MECHANISMS=$(mechanism_list)
KAFKA_SASL_USERNAME=$SASL_USERNAME
KAFKA_SASL_PASSWORD_FILE=$PASSWORD_FILE
EOF
}

print_ready() {
    echo "KAFKA_BOOTSTRAP=$BOOTSTRAP"
    if [[ "$SECURE" == 1 ]]; then
        cat "$SECURE_INFO"
    fi
}

# --------------------------------------------------------------------------- config
write_config() {
    local listeners="PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT"
    local advertised="PLAINTEXT://$HOST:$PORT"
    local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if [[ "$SECURE" == 1 ]]; then
        listeners+=",SASL_SSL://$SECURE_BOOTSTRAP"
        advertised+=",SASL_SSL://$SECURE_BOOTSTRAP"
        protocols+=",SASL_SSL:SASL_SSL"
    fi
    cat >"$PROPS" <<EOF
# Written by compose/kafka.sh: single-node KRaft, combined broker + controller.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
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
    if [[ "$SECURE" == 1 ]]; then
        # The keystore password is in this file: readable by its owner only.
        chmod 600 "$PROPS"
        cat >>"$PROPS" <<EOF

# SASL_SSL listener (start --secure); SCRAM users are added when the storage is formatted.
sasl.enabled.mechanisms=$(mechanism_list)
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USERNAME="$SASL_PASSWORD";
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=$STORE_PASSWORD
ssl.key.password=$STORE_PASSWORD
ssl.client.auth=none
EOF
    fi
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
    [[ "$SECURE" != invalid ]] || die "TRAIL_KAFKA_SECURE must be 1 or 0, not $TRAIL_KAFKA_SECURE"
    find_java
    PYTHON="$(find_python)"
    if [[ -z "$PYTHON" ]]; then
        log "warning: no Python with aiokafka (set TRAIL_PYTHON or create .venv); readiness" \
            "falls back to the broker's 'Kafka Server started' log line"
    fi

    local pid
    if pid="$(running_pid)"; then
        if [[ "$SECURE" == 1 && ! -f "$SECURE_INFO" ]]; then
            die "the broker for $DATA (pid $pid) runs without the SASL_SSL listener; stop it
       first (bash $0 stop), then start --secure"
        fi
        if probe 5; then
            log "already running (pid $pid) and answering on $BOOTSTRAP"
            print_ready
            return 0
        fi
        log "already running (pid $pid) but not answering yet; waiting up to ${START_TIMEOUT}s"
        if wait_ready "$pid"; then
            print_ready
            return 0
        fi
        log_tail
        die "broker pid $pid is running but not answering; try: bash $0 stop"
    fi

    cmd_fetch

    local p ports=("$PORT" "$CONTROLLER_PORT")
    if [[ "$SECURE" == 1 ]]; then
        ports+=("$SECURE_PORT")
        check_secret TRAIL_KAFKA_SASL_USERNAME "$SASL_USERNAME"
    fi
    for p in "${ports[@]}"; do
        if port_in_use "$p"; then
            die "port $HOST:$p is already in use by another process; choose other ports with
       TRAIL_KAFKA_PORT / TRAIL_KAFKA_CONTROLLER_PORT / TRAIL_KAFKA_SECURE_PORT"
        fi
    done

    local t0=$SECONDS
    mkdir -p "$DATA"
    # Fresh storage every run: a new cluster id, formatted once.
    rm -rf "$LOG_DIRS"
    rm -f "$LOG_FILE" "$SECURE_INFO"
    local format_args=()
    if [[ "$SECURE" == 1 ]]; then
        make_tls
        # SCRAM credentials live in the cluster metadata: written with the fresh storage.
        format_args=(--add-scram "SCRAM-SHA-512=[name=$SASL_USERNAME,password=$SASL_PASSWORD]")
    fi
    write_config
    local cluster_id
    cluster_id="$(random_cluster_id)"
    log "formatting $LOG_DIRS (cluster id $cluster_id)"
    if ! "$JAVA" -Xshare:auto -XX:TieredStopAtLevel=1 -Xmx256m \
        -Dlog4j2.configurationFile="$LOG4J" -cp "$LIBS/*" \
        kafka.tools.StorageTool format --standalone \
        -t "$cluster_id" -c "$PROPS" ${format_args[@]+"${format_args[@]}"} >"$DATA/format.log" 2>&1; then
        cat "$DATA/format.log" >&2
        die "kafka.tools.StorageTool format failed"
    fi

    local secured=""
    [[ "$SECURE" == 1 ]] && secured=", SASL_SSL on $SECURE_BOOTSTRAP"
    log "starting Kafka $(kafka_version) on $BOOTSTRAP (controller $HOST:$CONTROLLER_PORT," \
        "data $DATA$secured)"
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
    if [[ "$SECURE" == 1 ]]; then
        if ! probe_secure 30; then
            log_tail
            stop_pid "$pid" 10 || true
            rm -f "$PID_FILE"
            die "the SASL_SSL listener on $SECURE_BOOTSTRAP does not serve the test user" \
                "(log: $LOG_FILE)"
        fi
        write_secure_info
    fi
    log "ready in $((SECONDS - t0))s (pid $pid, log $LOG_FILE)"
    print_ready
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
    rm -f "$PID_FILE" "$SECURE_INFO"
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
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        fetch) cmd_fetch ;;
        start)
            case "${2:-}" in
                "") ;;
                --secure) SECURE=1 ;;
                *)
                    usage >&2
                    exit 2
                    ;;
            esac
            cmd_start
            ;;
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

#!/usr/bin/env bash
# Install, start, check and stop the real services the integration tests need:
# MariaDB (binlog on), InfluxDB 1.x and a single-node KRaft Apache Kafka, all
# bound to 127.0.0.1, run as plain background processes (no Docker, no systemd).
#
#   scripts/services.sh install   Debian packages + Kafka jars from Maven Central (idempotent)
#   scripts/services.sh start     start all three and wait until each answers (no-op if up)
#   scripts/services.sh status    one line per service: up or down (exit 3 if any is down)
#   scripts/services.sh env       export lines for a test run: eval "$(scripts/services.sh env)"
#   scripts/services.sh stop      stop what start started (data is kept)
#   scripts/services.sh clean     stop, then remove the whole state dir (jars too)
#
# start and stop take service names to act on those alone (the fault tests stop one service
# mid-run and start it again; data is kept, so a restarted service has everything it had):
#   scripts/services.sh stop influxdb          SIGTERM, then SIGKILL after 20 s
#   scripts/services.sh start influxdb kafka   start them and wait until they answer
# Services: mariadb, influxdb, kafka.
#
# Kafka has two more listeners that ask for a password (SASL mechanism PLAIN, the user and
# password `env` prints): SASL_PLAINTEXT on SHOPFLOW_KAFKA_SASL_PORT, and SASL_SSL on
# SHOPFLOW_KAFKA_SASL_SSL_PORT with a self-signed certificate for 127.0.0.1 made by keytool at the
# first start (its PEM, for ssl.ca.location, is the path `env` prints).
#
# Settings (environment):
#   SHOPFLOW_SERVICES_DIR       state dir (default target/services, relative to the repo root)
#   SHOPFLOW_MYSQL_PORT         3307     SHOPFLOW_INFLUX_PORT            8087
#   SHOPFLOW_INFLUX_RPC_PORT    8089     SHOPFLOW_KAFKA_PORT             9093
#   SHOPFLOW_KAFKA_CONTROLLER_PORT 9094  SHOPFLOW_KAFKA_VERSION          4.1.0
#   SHOPFLOW_KAFKA_SASL_PORT    9095     SHOPFLOW_KAFKA_SASL_SSL_PORT    9096
#   SHOPFLOW_KAFKA_HEAP         512m     SHOPFLOW_SERVICES_TIMEOUT       90 (s, per service)
#   SHOPFLOW_INFLUX_WRITE_TRACING  false (true: InfluxDB logs every write's body, to replay a
#                                  fault campaign's writes from logs/influxdb.log)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STATE=${SHOPFLOW_SERVICES_DIR:-target/services}
case $STATE in /*) ;; *) STATE=$ROOT/$STATE ;; esac
LOGS=$STATE/logs
RUN=$STATE/run

MYSQL_PORT=${SHOPFLOW_MYSQL_PORT:-3307}
INFLUX_PORT=${SHOPFLOW_INFLUX_PORT:-8087}
INFLUX_RPC_PORT=${SHOPFLOW_INFLUX_RPC_PORT:-8089}
KAFKA_PORT=${SHOPFLOW_KAFKA_PORT:-9093}
KAFKA_CONTROLLER_PORT=${SHOPFLOW_KAFKA_CONTROLLER_PORT:-9094}
KAFKA_SASL_PORT=${SHOPFLOW_KAFKA_SASL_PORT:-9095}
KAFKA_SASL_SSL_PORT=${SHOPFLOW_KAFKA_SASL_SSL_PORT:-9096}
KAFKA_VERSION=${SHOPFLOW_KAFKA_VERSION:-4.1.0}
KAFKA_HEAP=${SHOPFLOW_KAFKA_HEAP:-512m}
TIMEOUT=${SHOPFLOW_SERVICES_TIMEOUT:-90}
STOP_TIMEOUT=20

MYSQL_USER=shopflow
MYSQL_PASSWORD=shopflow
# The SASL/PLAIN user of Kafka's SASL listeners (test credentials of a local broker, not secrets).
KAFKA_SASL_USER=shopflow
KAFKA_SASL_PASSWORD=shopflow-sasl-password

MYSQL_DIR=$STATE/mariadb
MYSQL_CNF=$MYSQL_DIR/my.cnf
INFLUX_DIR=$STATE/influxdb
INFLUX_CONF=$INFLUX_DIR/influxdb.conf
KAFKA_DIR=$STATE/kafka
KAFKA_LIBS=$KAFKA_DIR/libs
KAFKA_CONF=$KAFKA_DIR/server.properties
KAFKA_TLS=$KAFKA_DIR/tls
KAFKA_KEYSTORE=$KAFKA_TLS/broker.p12
KAFKA_KEYSTORE_PASSWORD=shopflow-keystore
KAFKA_CA=$KAFKA_TLS/broker.pem

# Kafka main classes (Kafka 4.x).
KAFKA_MAIN=kafka.Kafka
KAFKA_STORAGE_TOOL=kafka.tools.StorageTool
KAFKA_TOPIC_TOOL=org.apache.kafka.tools.TopicCommand

say() { echo "services: $*"; }
die() { echo "services: error: $*" >&2; exit 1; }

# The unix socket path must fit in sun_path (108 bytes); fall back to /tmp.
MYSQL_SOCK=$MYSQL_DIR/mysqld.sock
if [ ${#MYSQL_SOCK} -gt 100 ]; then
    MYSQL_SOCK=/tmp/shopflow-mariadb-$(printf '%s' "$STATE" | sha256sum | cut -c1-12).sock
fi

# ---------------------------------------------------------------- helpers

mark_state_dir() {
    mkdir -p "$STATE" "$LOGS" "$RUN"
    [ -f "$STATE/.shopflow-services" ] || echo "state dir of scripts/services.sh" >"$STATE/.shopflow-services"
}

port_open() { # port -> 0 if something accepts TCP on 127.0.0.1:port
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

pid_of() { # service -> pid on stdout if its pid file names a live process of that service
    local name=$1 pidfile=$RUN/$1.pid pid pattern
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    case $name in
        mariadb) pattern=mariadbd ;;
        influxdb) pattern=influxd ;;
        kafka) pattern=$KAFKA_MAIN ;;
    esac
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
    echo "$pid"
}

log_of() { echo "$LOGS/$1.log"; }

fail_with_log() { # service message
    local log
    log=$(log_of "$1")
    echo "services: error: $2" >&2
    if [ -s "$log" ]; then
        echo "services: last 40 lines of $log:" >&2
        tail -n 40 "$log" >&2
    fi
    exit 1
}

spawn() { # service command... : run in its own session, stdout/stderr appended to its log
    local name=$1
    shift
    echo "---- $(date -u '+%Y-%m-%dT%H:%M:%SZ') services.sh start" >>"$(log_of "$name")"
    setsid "$@" </dev/null >>"$(log_of "$name")" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

check_ports_free() { # service port...
    local name=$1 port
    shift
    for port in "$@"; do
        if port_open "$port"; then
            die "$name: 127.0.0.1:$port is already in use by another process (not started by this script); stop it or set the port variable (see the head of $0)"
        fi
    done
}

spawned_pid() { # service -> pid on stdout while the process spawn started is alive
    # (unlike pid_of, also between its fork and its exec, when it does not look like the service)
    local pid
    pid=$(cat "$RUN/$1.pid" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ -d "/proc/$pid" ] || return 1
    if grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
        return 1
    fi
    echo "$pid"
}

wait_until() { # service description probe-function
    local name=$1 what=$2 probe=$3 deadline pid
    deadline=$((SECONDS + TIMEOUT))
    while true; do
        if "$probe"; then
            return 0
        fi
        if ! pid=$(spawned_pid "$name"); then
            fail_with_log "$name" "$name exited before it was ready ($what)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail_with_log "$name" "$name (pid $pid) not ready after ${TIMEOUT}s ($what)"
        fi
        sleep 1
    done
}

kafka_tool() { # main-class args... : a Kafka CLI class from the same classpath, quiet logging
    # (bounded: a tool that cannot reach the broker is killed after 60 s)
    timeout 60 java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

# ---------------------------------------------------------------- install

java_major() {
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n 1
}

install_packages() {
    local want=(mariadb-server mariadb-client influxdb maven curl ca-certificates) missing=() p major
    if ! command -v java >/dev/null 2>&1; then
        want+=(default-jre-headless)
    fi
    for p in "${want[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages already installed (${want[*]})"
    else
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq \
            || die "apt-get update failed"
        say "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
    major=$(java_major)
    if [ -z "$major" ] || [ "$major" -lt 17 ]; then
        die "Kafka $KAFKA_VERSION needs Java 17 or newer; 'java -version' says: $(java -version 2>&1 | head -n 1)"
    fi
}

kafka_pom() {
    local a
    cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by scripts/services.sh: the jars of a single-node Kafka broker + CLI tools -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.shopflow</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
EOF
    for a in kafka_2.13 kafka-server kafka-storage kafka-tools; do
        cat <<EOF
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>$a</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
EOF
    done
    cat <<EOF
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>2.24.3</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
}

install_kafka() {
    local stamp=$KAFKA_LIBS/.installed want
    mkdir -p "$KAFKA_DIR"
    kafka_pom >"$KAFKA_DIR/pom.xml.new"
    want="kafka $KAFKA_VERSION $(sha256sum <"$KAFKA_DIR/pom.xml.new" | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        rm -f "$KAFKA_DIR/pom.xml.new"
        say "Kafka $KAFKA_VERSION jars already in $KAFKA_LIBS"
        return 0
    fi
    mv "$KAFKA_DIR/pom.xml.new" "$KAFKA_DIR/pom.xml"
    say "mvn: Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
    rm -rf "$KAFKA_LIBS.tmp"
    if ! mvn -B -q -f "$KAFKA_DIR/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" >"$LOGS/kafka-install.log" 2>&1; then
        tail -n 40 "$LOGS/kafka-install.log" >&2
        die "mvn could not fetch Kafka $KAFKA_VERSION (log: $LOGS/kafka-install.log)"
    fi
    [ -f "$KAFKA_LIBS.tmp/kafka_2.13-$KAFKA_VERSION.jar" ] \
        || die "mvn ran but kafka_2.13-$KAFKA_VERSION.jar is not in $KAFKA_LIBS.tmp"
    rm -rf "$KAFKA_LIBS"
    mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
    echo "$want" >"$stamp"
    say "Kafka $KAFKA_VERSION: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars"
}

cmd_install() {
    mark_state_dir
    install_packages
    install_kafka
    say "install done"
}

require_installed() {
    local b
    for b in mariadbd mariadb-install-db mariadb mariadb-admin influxd curl java; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] \
            || die "$b not found: run scripts/services.sh install first"
    done
    [ -f "$KAFKA_LIBS/.installed" ] || die "Kafka jars not in $KAFKA_LIBS: run scripts/services.sh install first"
}

# ---------------------------------------------------------------- MariaDB

mysql_cli() { # extra args... : mariadb client as root over the socket
    mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot "$@"
}

mariadb_ping() {
    mariadb-admin --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" --connect-timeout=2 \
        -u"$MYSQL_USER" -p"$MYSQL_PASSWORD" ping >/dev/null 2>&1
}

mariadb_login() {
    mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" --connect-timeout=2 \
        -u"$MYSQL_USER" -p"$MYSQL_PASSWORD" -N -e 'SELECT 1' >/dev/null 2>&1
}

write_mariadb_cnf() {
    mkdir -p "$MYSQL_DIR/data" "$MYSQL_DIR/binlog" "$MYSQL_DIR/tmp"
    cat >"$MYSQL_CNF" <<EOF
# generated by scripts/services.sh (rewritten on every start)
[mysqld]
user                      = root
bind-address              = 127.0.0.1
port                      = $MYSQL_PORT
socket                    = $MYSQL_SOCK
datadir                   = $MYSQL_DIR/data
tmpdir                    = $MYSQL_DIR/tmp
pid-file                  = $MYSQL_DIR/mariadbd.pid
log-error                 = $(log_of mariadb)
skip-name-resolve
character-set-server      = utf8mb4
collation-server          = utf8mb4_unicode_ci
max_connections           = 500
innodb_buffer_pool_size   = 256M
# binlog for the change-data-capture reader
log_bin                   = $MYSQL_DIR/binlog/mysql-bin
binlog_format             = ROW
binlog_row_image          = FULL
server_id                 = 1
binlog_expire_logs_seconds = 604800
EOF
}

start_mariadb() {
    local pid
    if pid=$(pid_of mariadb); then
        if mariadb_ping; then
            say "mariadb already running (pid $pid) on 127.0.0.1:$MYSQL_PORT"
            return 0
        fi
        say "mariadb already started (pid $pid), waiting for it"
        return 0
    fi
    rm -f "$RUN/mariadb.pid"
    write_mariadb_cnf
    if [ ! -d "$MYSQL_DIR/data/mysql" ]; then
        say "mariadb: initialising datadir $MYSQL_DIR/data"
        rm -rf "$MYSQL_DIR/data"
        mkdir -p "$MYSQL_DIR/data"
        if ! mariadb-install-db --defaults-file="$MYSQL_CNF" --user=root --skip-test-db \
            --auth-root-authentication-method=socket >>"$LOGS/mariadb-install-db.log" 2>&1; then
            tail -n 40 "$LOGS/mariadb-install-db.log" >&2
            die "mariadb-install-db failed (log: $LOGS/mariadb-install-db.log)"
        fi
    fi
    say "mariadb: starting on 127.0.0.1:$MYSQL_PORT (log $(log_of mariadb))"
    spawn mariadb "$(command -v mariadbd || echo /usr/sbin/mariadbd)" --defaults-file="$MYSQL_CNF" --user=root
}

mariadb_socket_up() {
    [ -S "$MYSQL_SOCK" ] && mysql_cli -N -e 'SELECT 1' >/dev/null 2>&1
}

ready_mariadb() {
    wait_until mariadb "root login over $MYSQL_SOCK" mariadb_socket_up
    # sql_log_bin=0: keep this bookkeeping out of the binlog the CDC reader consumes.
    mysql_cli -e "
        SET SESSION sql_log_bin = 0;
        CREATE USER IF NOT EXISTS '$MYSQL_USER'@'%' IDENTIFIED BY '$MYSQL_PASSWORD';
        CREATE USER IF NOT EXISTS '$MYSQL_USER'@'localhost' IDENTIFIED BY '$MYSQL_PASSWORD';
        GRANT ALL PRIVILEGES ON *.* TO '$MYSQL_USER'@'%' WITH GRANT OPTION;
        GRANT ALL PRIVILEGES ON *.* TO '$MYSQL_USER'@'localhost' WITH GRANT OPTION;" >>"$(log_of mariadb)" 2>&1 \
        || fail_with_log mariadb "could not create MariaDB user $MYSQL_USER"
    wait_until mariadb "mariadb-admin ping over TCP 127.0.0.1:$MYSQL_PORT" mariadb_ping
    mariadb_login || fail_with_log mariadb "MariaDB answers ping but $MYSQL_USER cannot log in over TCP"
    say "mariadb ready: mysql://$MYSQL_USER:$MYSQL_PASSWORD@127.0.0.1:$MYSQL_PORT (binlog ROW)"
}

# ---------------------------------------------------------------- InfluxDB

influx_ping() { curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$INFLUX_PORT/ping"; }

write_influx_conf() {
    mkdir -p "$INFLUX_DIR/meta" "$INFLUX_DIR/data" "$INFLUX_DIR/wal"
    cat >"$INFLUX_CONF" <<EOF
# generated by scripts/services.sh (rewritten on every start)
reporting-disabled = true
bind-address = "127.0.0.1:$INFLUX_RPC_PORT"

[meta]
  dir = "$INFLUX_DIR/meta"

[data]
  dir = "$INFLUX_DIR/data"
  wal-dir = "$INFLUX_DIR/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:$INFLUX_PORT"
  auth-enabled = false
  log-enabled = false
  write-tracing = ${SHOPFLOW_INFLUX_WRITE_TRACING:-false}

[logging]
  level = "info"
  suppress-logo = true

[subscriber]
  enabled = false

[continuous_queries]
  enabled = true
EOF
}

start_influxdb() {
    local pid
    if pid=$(pid_of influxdb); then
        if influx_ping; then
            say "influxdb already running (pid $pid) on 127.0.0.1:$INFLUX_PORT"
        else
            say "influxdb already started (pid $pid), waiting for it"
        fi
        return 0
    fi
    rm -f "$RUN/influxdb.pid"
    write_influx_conf
    say "influxdb: starting on 127.0.0.1:$INFLUX_PORT (log $(log_of influxdb))"
    spawn influxdb "$(command -v influxd)" run -config "$INFLUX_CONF"
}

ready_influxdb() {
    wait_until influxdb "GET http://127.0.0.1:$INFLUX_PORT/ping" influx_ping
    say "influxdb ready: http://127.0.0.1:$INFLUX_PORT"
}

# ---------------------------------------------------------------- Kafka

write_kafka_conf() {
    mkdir -p "$KAFKA_DIR/data"
    cat >"$KAFKA_CONF" <<EOF
# generated by scripts/services.sh (rewritten on every start): single-node KRaft
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
# The SASL listeners: mechanism PLAIN, users and passwords inline (user_<name>="<password>").
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_KEYSTORE
listener.name.sasl_ssl.ssl.keystore.password=$KAFKA_KEYSTORE_PASSWORD
log.dirs=$KAFKA_DIR/data
num.partitions=4
auto.create.topics.enable=true
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
EOF
    cat >"$KAFKA_DIR/log4j2.properties" <<EOF
# generated by scripts/services.sh: broker log to a file
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $(log_of kafka)
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
    cat >"$KAFKA_DIR/tools-log4j2.properties" <<EOF
# generated by scripts/services.sh: CLI tools log warnings to stderr
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

kafka_keystore() { # the SASL_SSL listener's key and self-signed certificate, made once
    [ -s "$KAFKA_KEYSTORE" ] && [ -s "$KAFKA_CA" ] && return 0
    mkdir -p "$KAFKA_TLS"
    rm -f "$KAFKA_KEYSTORE" "$KAFKA_CA"
    say "kafka: a self-signed certificate for 127.0.0.1 in $KAFKA_KEYSTORE"
    keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 \
        -dname "CN=127.0.0.1" -ext "SAN=ip:127.0.0.1,dns:localhost" -storetype PKCS12 \
        -keystore "$KAFKA_KEYSTORE" -storepass "$KAFKA_KEYSTORE_PASSWORD" \
        >>"$LOGS/kafka-keystore.log" 2>&1 \
        && keytool -exportcert -rfc -alias broker -keystore "$KAFKA_KEYSTORE" \
            -storepass "$KAFKA_KEYSTORE_PASSWORD" -file "$KAFKA_CA" >>"$LOGS/kafka-keystore.log" 2>&1 \
        || die "keytool could not make the SASL_SSL certificate (log: $LOGS/kafka-keystore.log)"
}

start_kafka() {
    local pid cluster_id
    if pid=$(pid_of kafka); then
        if ! grep -q "^listeners=.*SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT" "$KAFKA_CONF" 2>/dev/null; then
            die "kafka (pid $pid) runs with a configuration without the SASL listeners on :$KAFKA_SASL_PORT and :$KAFKA_SASL_SSL_PORT (started before they were added, or with other ports): restart it with '$0 stop kafka' then '$0 start kafka'"
        fi
        if port_open "$KAFKA_PORT"; then
            say "kafka already running (pid $pid) on 127.0.0.1:$KAFKA_PORT"
        else
            say "kafka already started (pid $pid), waiting for it"
        fi
        return 0
    fi
    rm -f "$RUN/kafka.pid"
    kafka_keystore
    write_kafka_conf
    if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
        if [ ! -s "$KAFKA_DIR/cluster.id" ]; then
            # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding (22 chars).
            # Never starting with `-`, which `kafka-storage format -t` takes for an option (1 time
            # in 64 it failed the start).
            head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' | sed 's/^-/A/' >"$KAFKA_DIR/cluster.id"
        fi
        cluster_id=$(cat "$KAFKA_DIR/cluster.id")
        say "kafka: formatting storage $KAFKA_DIR/data (cluster id $cluster_id)"
        if ! kafka_tool "$KAFKA_STORAGE_TOOL" format -t "$cluster_id" -c "$KAFKA_CONF" \
            >>"$LOGS/kafka-format.log" 2>&1; then
            tail -n 40 "$LOGS/kafka-format.log" >&2
            die "kafka storage format failed (log: $LOGS/kafka-format.log)"
        fi
    fi
    say "kafka: starting on 127.0.0.1:$KAFKA_PORT (log $(log_of kafka))"
    spawn kafka java -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
        -cp "$KAFKA_LIBS/*" "$KAFKA_MAIN" "$KAFKA_CONF"
}

kafka_port_open() { port_open "$KAFKA_PORT"; }
kafka_sasl_ports_open() { port_open "$KAFKA_SASL_PORT" && port_open "$KAFKA_SASL_SSL_PORT"; }

kafka_metadata() {
    kafka_tool "$KAFKA_TOPIC_TOOL" --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list \
        >/dev/null 2>>"$LOGS/kafka-probe.log"
}

ready_kafka() {
    wait_until kafka "TCP 127.0.0.1:$KAFKA_PORT" kafka_port_open
    wait_until kafka "topic list via $KAFKA_TOPIC_TOOL" kafka_metadata
    wait_until kafka "TCP 127.0.0.1:$KAFKA_SASL_PORT and :$KAFKA_SASL_SSL_PORT (SASL)" kafka_sasl_ports_open
    say "kafka ready: 127.0.0.1:$KAFKA_PORT (Kafka $KAFKA_VERSION, KRaft), SASL/PLAIN on :$KAFKA_SASL_PORT (SASL_PLAINTEXT) and :$KAFKA_SASL_SSL_PORT (SASL_SSL)"
}

# ---------------------------------------------------------------- commands

SERVICES=(mariadb influxdb kafka)

check_names() { # names... : dies on a name that is not a service
    local name
    for name in "$@"; do
        case $name in
            mariadb | influxdb | kafka) ;;
            *) die "unknown service '$name' (services: ${SERVICES[*]})" ;;
        esac
    done
}

services_of() { # checked names... -> the named services (all when none), in start order
    local name
    if [ $# -eq 0 ]; then
        echo "${SERVICES[*]}"
        return 0
    fi
    for name in "${SERVICES[@]}"; do
        case " $* " in *" $name "*) printf '%s ' "$name" ;; esac
    done
    echo
}

cmd_start() { # [service...]
    local names name
    check_names "$@"
    read -r -a names <<<"$(services_of "$@")"
    require_installed
    mark_state_dir
    # Refuse before launching anything if a port we need is held by a process we did not start.
    for name in "${names[@]}"; do
        pid_of "$name" >/dev/null && continue
        case $name in
            mariadb) check_ports_free mariadb "$MYSQL_PORT" ;;
            influxdb) check_ports_free influxdb "$INFLUX_PORT" "$INFLUX_RPC_PORT" ;;
            kafka) check_ports_free kafka "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT" "$KAFKA_SASL_SSL_PORT" ;;
        esac
    done
    # Launch them all first (they boot in parallel), then wait for each.
    for name in "${names[@]}"; do "start_$name"; done
    for name in "${names[@]}"; do "ready_$name"; done
    if [ $# -eq 0 ]; then
        say "all services up (state dir $STATE)"
    fi
}

stop_one() {
    local name=$1 pid waited=0
    if ! pid=$(pid_of "$name"); then
        rm -f "$RUN/$name.pid"
        say "$name not running"
        return 0
    fi
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while [ -d "/proc/$pid" ] && [ "$waited" -lt $((STOP_TIMEOUT * 5)) ]; do
        sleep 0.2
        waited=$((waited + 1))
    done
    if [ -d "/proc/$pid" ]; then
        say "$name did not stop in ${STOP_TIMEOUT}s: KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$RUN/$name.pid"
}

cmd_stop() { # [service...]: in reverse start order
    local names i
    check_names "$@"
    read -r -a names <<<"$(services_of "$@")"
    for ((i = ${#names[@]} - 1; i >= 0; i--)); do
        stop_one "${names[$i]}"
    done
}

status_line() { # name address probe
    local pid
    if pid=$(pid_of "$1") && "$3"; then
        echo "$1: up (pid $pid, $2)"
        return 0
    fi
    if pid=$(pid_of "$1"); then
        echo "$1: down (pid $pid is running but $2 does not answer)"
    else
        echo "$1: down"
    fi
    return 1
}

cmd_status() {
    local rc=0
    status_line mariadb "127.0.0.1:$MYSQL_PORT" mariadb_ping || rc=3
    status_line influxdb "127.0.0.1:$INFLUX_PORT" influx_ping || rc=3
    status_line kafka "127.0.0.1:$KAFKA_PORT" kafka_port_open || rc=3
    return $rc
}

cmd_env() {
    echo "export SHOPFLOW_TEST_MYSQL_URL=mysql://$MYSQL_USER:$MYSQL_PASSWORD@127.0.0.1:$MYSQL_PORT"
    echo "export SHOPFLOW_TEST_INFLUX_URL=http://127.0.0.1:$INFLUX_PORT"
    echo "export SHOPFLOW_TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
    echo "export SHOPFLOW_TEST_KAFKA_SASL_BROKERS=127.0.0.1:$KAFKA_SASL_PORT"
    echo "export SHOPFLOW_TEST_KAFKA_SASL_SSL_BROKERS=127.0.0.1:$KAFKA_SASL_SSL_PORT"
    echo "export SHOPFLOW_TEST_KAFKA_SASL_USERNAME=$KAFKA_SASL_USER"
    echo "export SHOPFLOW_TEST_KAFKA_SASL_PASSWORD=$KAFKA_SASL_PASSWORD"
    echo "export SHOPFLOW_TEST_KAFKA_CA=$KAFKA_CA"
}

cmd_clean() {
    cmd_stop
    if [ -d "$STATE" ]; then
        [ -f "$STATE/.shopflow-services" ] || die "$STATE has no .shopflow-services marker: not removing it"
        say "removing $STATE"
        rm -rf "$STATE"
    fi
    case $MYSQL_SOCK in /tmp/*) rm -f "$MYSQL_SOCK" ;; esac
}

usage() {
    echo "usage: $0 install|status|env|clean" >&2
    echo "       $0 start|stop [mariadb|influxdb|kafka...]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
command=$1
shift
case $command in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    install | status | env | clean)
        [ $# -eq 0 ] || usage
        "cmd_$command"
        ;;
    *) usage ;;
esac

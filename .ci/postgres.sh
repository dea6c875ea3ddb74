# Source this file: starts a throwaway PostgreSQL 15 in a temp dir and exports
#   STOPBANDIT_TEST_PG_URL  the SQLAlchemy URL of its `postgres` database
#   STOPBANDIT_TEST_PG_CTL  a command prefix that runs pg_ctl on it (for outage tests)
#   STOPBANDIT_TEST_PGDATA  its data directory
# and registers `stop_test_postgres` to stop it and remove the directory.
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SB_PG_TMP=$(mktemp -d -t stopbandit-pg.XXXXXX)
chmod 755 "$SB_PG_TMP"
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root; the image has a `postgres` user.
  chown postgres "$SB_PG_TMP"
  SB_PG_AS="runuser -u postgres --"
else
  SB_PG_AS=""
fi
SB_PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$SB_PG_AS "$PGBIN/initdb" -D "$SB_PG_TMP/data" -U stopbandit --auth=trust -E UTF8 >"$SB_PG_TMP/initdb.log" 2>&1 \
  || { cat "$SB_PG_TMP/initdb.log"; return 1; }
# -l: pg_ctl must not hold our stdout open; fsync off: a throwaway test server.
$SB_PG_AS "$PGBIN/pg_ctl" -D "$SB_PG_TMP/data" -l "$SB_PG_TMP/server.log" -w -t 60 \
  -o "-p $SB_PG_PORT -k $SB_PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
  || { cat "$SB_PG_TMP/server.log"; return 1; }
export STOPBANDIT_TEST_PG_URL="postgresql+psycopg://stopbandit@127.0.0.1:$SB_PG_PORT/postgres"
export STOPBANDIT_TEST_PGDATA="$SB_PG_TMP/data"
export STOPBANDIT_TEST_PG_CTL="$SB_PG_AS $PGBIN/pg_ctl -D $SB_PG_TMP/data -l $SB_PG_TMP/server.log -w -t 60 -o \"-p $SB_PG_PORT -k $SB_PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200\""
echo "PostgreSQL 15 test server on 127.0.0.1:$SB_PG_PORT (data in $SB_PG_TMP)"

stop_test_postgres() {
  $SB_PG_AS "$PGBIN/pg_ctl" -D "$SB_PG_TMP/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$SB_PG_TMP"
}

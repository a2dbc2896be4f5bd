#!/usr/bin/env bash
# Swap PUBLIC projects' own test suites onto pytest-memdb as a user would, with ini lines
# only: memdb_takeover. No conftest code; test files and the projects' code untouched.
#
# These suites make their engines themselves, where no memdb_bind path reaches them: at
# import in a test helper module, inside function- or module-scoped fixtures, on URLs
# from environment variables. memdb_takeover lists those URLs; each connection the
# suite's engines make to them opens the running test's memdb database.
#
#   sqladmin          aminalaee/sqladmin @ $SQLADMIN_COMMIT (git): a sync and an async
#                     engine on ./test.db made at import in tests/common.py; 14 modules,
#                     each its own Base, create_all + drop_all around every test.
#                     Lines: sqladmin_memdb.ini, placed as the project's pytest.ini.
#   starlette-admin   jowilf/starlette-admin 0.17.1 (git tag, $STADMIN_COMMIT): engines
#                     made in fixtures from SQLA_ENGINE (./test.db) and SQLA_ASYNC_ENGINE
#                     (/tmp/test.db), create_all + drop_all per test; its tests/sqla, as
#                     its `hatch run test:sqla` runs them (later releases run every
#                     SQLAlchemy test against MySQL and PostgreSQL containers as well: no
#                     Docker here). Lines: starlette_admin_memdb.toml, put under
#                     [tool.pytest.ini_options] in its pyproject.toml.
#   fastapi-sql-tutorial
#                     FastAPI's SQL tutorial's tests (fastapi 0.141.1's PyPI sdist,
#                     tests/test_tutorial/test_sql_databases): a module-scoped fixture
#                     replaces the tutorial's engine with a sqlite:// StaticPool one and
#                     runs the app's startup create_all. Lines:
#                     fastapi_sql_tutorial_memdb.toml, put under [tool.pytest].
#
# What each swap takes (the files say why): sqladmin and starlette-admin, memdb_takeover
# alone (the template is empty: the suites make their own tables; the runs measured below
# had a no-op `memdb_load = builtins:id` instead, from before takeover alone was accepted);
# the tutorial, memdb_takeover and memdb_metadata. Plus `memdb_strict = true` in each.
#
# Measured (RUNS=3, medians, 2 shared cores): every test kept its outcome in every swapped
# run. sqladmin 239 passed + 2 skipped: 24.7 s as shipped, 22.2 s copy, 25.8 s rollback
# (65-76 s as shipped while the disk was busy: its time is the file's create_all/drop_all
# syncs, 31-45 s swapped then). starlette-admin 91 passed + 1 skipped: 13.3 s, 5.6 s copy,
# 6.6 s rollback. The tutorial, 8 passed: 2.8 s, 3.6 s (its tests are on sqlite://
# already: no gain, the plugin's start-up). Strict rows within noise of the others.
#
# Rows, RUNS runs each (default 3; median wall time by bash `time`):
#   original         the suite as shipped.
#   memdb-copy       swapped, copy isolation, -o memdb_strict=false.
#   memdb-rollback   swapped, rollback isolation, -o memdb_strict=false.
#   strict-copy      swapped as the ini says (memdb_strict = true), copy isolation.
#   strict-rollback  the same in rollback isolation.
#   control          once: strict, no takeover (-o memdb_takeover=): must pass FEWER tests
#                    than the original and create no database file, which shows that
#                    memdb_strict is on (it refuses before SQLite opens the file) and that
#                    the takeover is what the swapped runs pass by.
# Every swapped run must give every test the outcome it had in the original (compared
# test by test from JUnit XML), report "memdb: takeover of" in its header, and leave the
# projects' database files alone: in the swapped tree the project's own file (./test.db;
# the tutorial's ./database.db) is a directory while the suite runs (a connection to it
# fails) and must stay empty; /tmp/test.db (starlette-admin) must not appear (it is
# removed after the original runs when they made it) or, when it was there before this
# script, must be unchanged.
#
# Each project runs in a venv of its own ($SQLADMIN_VENV, $STADMIN_VENV, $FASTAPI_VENV;
# made here if missing) with its test dependencies pinned below and pytest-memdb installed
# from this repository as a wheel, not editable: an editable install puts this
# repository's own tests/ package on sys.path, and these projects' tests/ packages would
# collide with it. Where the project pins pytest or pytest-asyncio below what pytest-memdb
# needs, both runs, original and swapped, use the raised versions.
#
# Environment: WORK (scratch folder, default a new /tmp/memdb-dropin-takeover.XXXXXX),
# RUNS (3), SQLADMIN_VENV (/tmp/dropin-sqladmin-venv), STADMIN_VENV
# (/tmp/dropin-stadmin-venv), FASTAPI_VENV (/tmp/dropin-fastapi-venv), SQLADMIN_GIT and
# STADMIN_GIT (a git dir or clone of each; default the local mirror if present, else a
# clone from GitHub into WORK).
#
# Usage: benchmarks/dropin/run_dropin_takeover.sh [sqladmin] [starlette-admin]
#            [fastapi-sql-tutorial]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
runs=${RUNS:-3}
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/memdb-dropin-takeover.XXXXXX")}
case "$work" in "$repo"|"$repo"/*) echo "WORK must be outside the repository" >&2; exit 2 ;; esac
mkdir -p "$work/logs"

SQLADMIN_URL=https://github.com/aminalaee/sqladmin
SQLADMIN_COMMIT=5ec2360f9d17e40414f4bcda24b2dac0fcda8f9c  # 2026-03-31
# Its uv.lock's versions (aiosqlite raised from 0.21.0 to what pytest-memdb needs).
SQLADMIN_PINS=(
  starlette==0.50.0 wtforms==3.1.2 jinja2==3.1.6 python-multipart==0.0.20
  'sqlalchemy[asyncio]==2.0.45' aiosqlite==0.22.1 greenlet==3.3.0 anyio==4.12.0
  httpx==0.28.1 itsdangerous==2.2.0 arrow==1.4.0 babel==2.17.0 colour==0.1.5
  email-validator==2.3.0 fastapi-storages==0.3.0 phonenumbers==9.0.20 pillow==12.0.0
  python-dateutil==2.9.0.post0 sqlalchemy-utils==0.42.0 sqlmodel==0.0.31
  pytest==9.0.2 pytest-asyncio==1.5.0
)
STADMIN_URL=https://github.com/jowilf/starlette-admin
STADMIN_COMMIT=cf451259e0dfcadc2c4314f9e1a25139fae457d1  # tag 0.17.1, 2026-07-19
# Within its `test` extra's ranges, except pytest-asyncio (<0.25 there), raised to what
# pytest-memdb needs; pytest stays in the project's range (<8.5).
STADMIN_PINS=(
  starlette==1.10.0 jinja2==3.1.6 python-multipart==0.0.34 babel==2.17.0
  'sqlalchemy[asyncio]==2.0.45' aiosqlite==0.22.1 httpx==0.28.1 sqlalchemy-utils==0.42.0
  sqlmodel==0.0.31 arrow==1.4.0 colour==0.1.5 phonenumbers==9.0.20 passlib==1.7.4
  sqlalchemy-file==0.6.0 apache-libcloud==3.8.0 fasteners==0.20 pillow==11.0.0
  itsdangerous==2.2.0 'pydantic[email]==2.13.5' psycopg2-binary==2.9.13 requests==2.34.2
  pytest==8.4.2 pytest-asyncio==1.4.1.post1
)
FASTAPI_PKG=fastapi==0.141.1
# Its uv.lock's versions of what these tests import, and pytest-xdist (its tests use the
# xdist_group marker under --strict-markers).
FASTAPI_PINS=(
  starlette==1.3.1 pydantic==2.13.4 typing-extensions==4.16.0 typing-inspection==0.4.2
  annotated-doc==0.0.4 anyio==4.12.1 httpx==0.28.1 httpx2==2.9.1 dirty-equals==0.11
  inline-snapshot==0.35.2 'sqlalchemy[asyncio]==2.0.46' sqlmodel==0.0.39 pyyaml==6.0.3
  pytest==9.1.1 pytest-timeout==2.4.0 pytest-xdist==3.8.0 pytest-asyncio==1.5.0
  aiosqlite==0.22.1
)

projects=("$@")
[ ${#projects[@]} -gt 0 ] || projects=(sqladmin starlette-admin fastapi-sql-tutorial)

status=0
table=()
log() { printf '== %s\n' "$*" >&2; }
fail() { log "$*"; status=1; }

# venv DIR PINS...: make DIR if missing; install the pins and this tree's pytest-memdb
venv() {
  local dir=$1
  shift
  [ -x "$dir/bin/python" ] || { log "making $dir"; python3 -m venv "$dir"; }
  log "installing pytest-memdb (a wheel of $repo) and the pinned test dependencies into $dir"
  # The first brings pytest-memdb's dependencies; the second this tree's code, always.
  "$dir/bin/python" -m pip install --quiet "$repo" "$@" >&2
  "$dir/bin/python" -m pip install --quiet --no-deps --force-reinstall "$repo" >&2
}

# gitdir NAME VAR URL: the project's git dir ($VAR, the local mirror, or a fresh clone)
gitdir() {
  local name=$1 given=$2 url=$3 dir
  dir=$given
  if [ -z "$dir" ] && [ -d "/work/.mirror/${name/\//+}/repo" ]; then
    dir="/work/.mirror/${name/\//+}/repo"
  fi
  if [ -z "$dir" ]; then
    log "cloning $url"
    dir="$work/${name/\//+}.git"
    [ -d "$dir" ] || git clone --quiet --bare "$url" "$dir" >&2
  fi
  [ -e "$dir/.git" ] && dir="$dir/.git"
  echo "$dir"
}

# unpack_git GITDIR COMMIT: $orig and $swap, two copies of the tree at COMMIT
unpack_git() {
  orig="$work/orig/$project" swap="$work/swap/$project"
  rm -rf "$orig" "$swap"
  mkdir -p "$orig" "$swap"
  git --git-dir="$1" archive "$2" | tar -x -C "$orig"
  git --git-dir="$1" archive "$2" | tar -x -C "$swap"
}

# toml_insert FILE HEADER LINES: LINES' content right under the HEADER line of FILE
toml_insert() {
  python3 - "$1" "$2" "$3" <<'EOF'
import sys

path, header, lines = sys.argv[1:]
text = open(path).read()
marker = header + "\n"
if text.count(marker) != 1:
    sys.exit(f"{path}: expected one {header!r} line")
open(path, "w").write(text.replace(marker, marker + open(lines).read(), 1))
EOF
}

# outcomes XML: one "nodeid outcome" line per test, sorted (setup/teardown errors count)
outcomes() {
  python3 - "$1" <<'EOF'
import sys
import xml.etree.ElementTree as ET

found = {}
for case in ET.parse(sys.argv[1]).iter("testcase"):
    key = f"{case.get('classname')}::{case.get('name')}"
    tags = sorted({child.tag for child in case} & {"failure", "error", "skipped"})
    found.setdefault(key, set()).update(tags or ["passed"])
for key in sorted(found):
    print(key, "+".join(sorted(found[key])))
EOF
}

# db_files_ok MODE: the project's database files were left alone by a swapped run
db_files_ok() {
  local mode=$1 name
  for name in "${local_dbs[@]}"; do
    if [ "$mode" = control ]; then  # no directory: strict refuses before SQLite creates it
      [ ! -e "$swap/$name" ] || fail "$project control: ./$name was created"
    elif [ ! -d "$swap/$name" ] || [ -n "$(ls -A "$swap/$name")" ]; then
      fail "$project $mode: the project's ./$name was touched"
    fi
  done
  if [ "$project" = starlette-admin ] && [ "$(tmp_db_state)" != "$tmp_db_before" ]; then
    fail "$project $mode: /tmp/test.db was touched"
  fi
}
tmp_db_state() { stat -c '%s %Y' /tmp/test.db 2>/dev/null || echo absent; }

# run_suite MODE DIR PYTHON COUNT [pytest args...]: COUNT runs; appends a table row; sets
# last_passed, last_log, last_outcomes
run_suite() {
  local mode=$1 dir=$2 py=$3 count=$4
  shift 4
  local i times=() passed failed errors rlog tfile xml name first_passed=
  for ((i = 1; i <= count; i++)); do
    rlog="$work/logs/$project.$mode.$i.log" tfile="$work/logs/$project.$mode.$i.time"
    xml="$work/logs/$project.$mode.$i.xml"
    # Each run starts from a clean tree (no caches, no leftover database file).
    find "$dir" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    for name in "${local_dbs[@]}"; do
      rm -rf "${dir:?}/$name"
      case "$mode" in original | control) ;; *) mkdir "$dir/$name" ;; esac
    done
    (
      cd "$dir"
      TIMEFORMAT=%R
      { time nice -n 10 "$py" -m pytest -p no:cacheprovider --junitxml="$xml" \
          "${suite_args[@]}" "$@" >"$rlog" 2>&1 || true; } 2>"$tfile"
    )
    times+=("$(tail -n 1 "$tfile")")
    passed=$(tail -n 1 "$rlog" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
    failed=$(tail -n 1 "$rlog" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
    errors=$(tail -n 1 "$rlog" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+' || echo 0)
    log "$project $mode run $i: $(tail -n 1 "$rlog" | tr -d '=' | sed 's/^ *//') (wall ${times[-1]} s)"
    last_outcomes="$work/logs/$project.$mode.$i.outcomes"
    if [ -f "$xml" ]; then outcomes "$xml" >"$last_outcomes"; else : >"$last_outcomes"; fi
    if [ "$mode" != original ]; then
      db_files_ok "$mode"
    fi
    if [ "$mode" != original ] && [ "$mode" != control ]; then
      grep -q "^memdb: takeover of " "$rlog" || fail "$project $mode run $i: no takeover header"
      if ! diff -q "$orig_outcomes" "$last_outcomes" >/dev/null; then
        fail "$project $mode run $i: outcomes differ from the original's:" \
          "$(diff "$orig_outcomes" "$last_outcomes" | grep '^[<>]' | head -n 5 | tr '\n' ';')"
      fi
    fi
    if [ -n "$first_passed" ] && [ "$passed" != "$first_passed" ]; then
      fail "$project $mode: pass count changed between runs ($first_passed -> $passed)"
    fi
    [ -n "$first_passed" ] || first_passed=$passed
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  last_passed=$passed
  last_log=$rlog
  [ "$mode" != original ] || orig_median=$median
  local ratio
  ratio=$(awk -v a="$orig_median" -v b="$median" 'BEGIN {printf "%.2fx", a / b}')
  table+=("$(printf '%-22s %-16s %6s %6s %6s %9s %8s' "$project" "$mode" "$passed" "$failed" \
    "$errors" "$median" "$ratio")")
}

# compare PYTHON: the original's rows, then the swapped tree's
compare() {
  local py=$1 iso
  run_suite original "$orig" "$py" "$runs"
  orig_passed=$last_passed
  orig_outcomes=$last_outcomes
  [ "$orig_passed" -gt 0 ] || fail "$project: the original suite passed nothing"
  if [ "$project" = starlette-admin ] && [ "$tmp_db_before" = absent ]; then
    rm -f /tmp/test.db  # made by the original runs above
  fi
  for iso in copy rollback; do
    run_suite "memdb-$iso" "$swap" "$py" "$runs" --memdb-isolation "$iso" -o memdb_strict=false
  done
  for iso in copy rollback; do
    run_suite "strict-$iso" "$swap" "$py" "$runs" --memdb-isolation "$iso"
  done
  run_suite control "$swap" "$py" 1 -o memdb_takeover= --tb=line
  if [ "$last_passed" -ge "$orig_passed" ]; then
    fail "$project control: strict without takeover passed $last_passed (original $orig_passed)"
  fi
}

for project in "${projects[@]}"; do
  case "$project" in
    sqladmin)
      py="${SQLADMIN_VENV:-/tmp/dropin-sqladmin-venv}/bin/python"
      venv "${py%/bin/python}" "${SQLADMIN_PINS[@]}"
      unpack_git "$(gitdir aminalaee/sqladmin "${SQLADMIN_GIT:-}" "$SQLADMIN_URL")" "$SQLADMIN_COMMIT"
      [ ! -e "$swap/pytest.ini" ] || { log "sqladmin has a pytest.ini now"; exit 2; }
      cp "$here/sqladmin_memdb.ini" "$swap/pytest.ini"
      suite_args=(tests) local_dbs=(test.db)
      compare "$py"
      ;;
    starlette-admin)
      py="${STADMIN_VENV:-/tmp/dropin-stadmin-venv}/bin/python"
      venv "${py%/bin/python}" "${STADMIN_PINS[@]}"
      unpack_git "$(gitdir jowilf/starlette-admin "${STADMIN_GIT:-}" "$STADMIN_URL")" "$STADMIN_COMMIT"
      toml_insert "$swap/pyproject.toml" "[tool.pytest.ini_options]" "$here/starlette_admin_memdb.toml"
      tmp_db_before=$(tmp_db_state)
      suite_args=(tests/sqla) local_dbs=(test.db)
      compare "$py"
      ;;
    fastapi-sql-tutorial)
      py="${FASTAPI_VENV:-/tmp/dropin-fastapi-venv}/bin/python"
      venv "${py%/bin/python}" "${FASTAPI_PINS[@]}"
      mkdir -p "$work/sdist"
      "$py" -m pip download --quiet --no-deps --no-binary fastapi -d "$work/sdist" "$FASTAPI_PKG" >&2
      tarball="$work/sdist/fastapi-${FASTAPI_PKG##*==}.tar.gz"
      [ -f "$tarball" ] || { log "no sdist $tarball"; exit 2; }
      orig="$work/orig/$project" swap="$work/swap/$project"
      rm -rf "$orig" "$swap"
      mkdir -p "$orig" "$swap"
      tar xzf "$tarball" -C "$orig" --strip-components=1
      tar xzf "$tarball" -C "$swap" --strip-components=1
      toml_insert "$swap/pyproject.toml" "[tool.pytest]" "$here/fastapi_sql_tutorial_memdb.toml"
      # The tutorial's own file (its engine is replaced by the tests before it connects).
      suite_args=(tests/test_tutorial/test_sql_databases) local_dbs=(database.db)
      compare "$py"
      ;;
    *)
      echo "unknown project: $project" >&2
      exit 2
      ;;
  esac
done

echo
echo "pytest-memdb drop-in by memdb_takeover: $runs runs per row (control: 1), median wall" \
  "seconds (logs: $work/logs)"
printf '%-22s %-16s %6s %6s %6s %9s %8s\n' project mode passed failed errors median_s vs_orig
for row in "${table[@]}"; do echo "$row"; done
if [ "$status" -ne 0 ]; then
  echo "FAILED: see the messages above"
else
  echo "OK: every swapped run kept every test's outcome; the database files were untouched"
fi
exit "$status"

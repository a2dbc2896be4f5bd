#!/usr/bin/env bash
# Drop pytest-memdb into a public FastAPI app's own test suite with ini lines only:
# taller2-fiufit/svc-trainings (https://github.com/taller2-fiufit/svc-trainings), pinned
# at commit $SVC_COMMIT. No PyPI sdist exists, so the tree comes from git at run time
# (never into this repository): $SVC_GIT if set (a git dir or clone), else a clone from
# GitHub into the scratch folder.
#
# The app (async SQLAlchemy 2.0, FastAPI, Alembic) makes `engine = create_async_engine(...)`
# and `SessionLocal = async_sessionmaker(engine)` at import in src/db/session.py, on
# sqlite+aiosqlite:///./local.db unless POSTGRES_DB is set. Each test's `client` fixture
# runs `alembic downgrade base` and the app's lifespan `alembic upgrade head` through that
# engine. Swapped: svc_trainings_memdb.ini is appended to the project's pytest.ini
# (memdb_alembic builds the template from the migrations, memdb_bind re-points the engine
# and its sessionmaker); no conftest code.
#
# Proof that nothing reached the app's own database: the ini sets memdb_strict = true (a
# test that opens any other SQLite database through SQLAlchemy fails), and in the swapped
# tree ./local.db is a directory while the suite runs, so any connection to it fails
# ("unable to open database file"); it must still be an empty directory afterwards.
#
# Runs the suite as shipped ("original", ./local.db removed first, as its Makefile does)
# and swapped in copy and rollback isolation, RUNS times each (default 3); prints the
# pass/fail counts and median wall time (bash `time`). Exits non-zero when a swapped run
# passes fewer tests than the original, when the original passes none, or when the
# app's database was touched.
#
# Environment: WORK (scratch folder, default a new /tmp/memdb-dropin-svc.XXXXXX), RUNS (3),
# SVC_VENV (/tmp/svc-venv, made here if missing, with this repo installed editable and the
# project's locked runtime versions where pytest-memdb allows them), SVC_GIT.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
runs=${RUNS:-3}
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/memdb-dropin-svc.XXXXXX")}
venv=${SVC_VENV:-/tmp/svc-venv}
case "$work" in "$repo"|"$repo"/*) echo "WORK must be outside the repository" >&2; exit 2 ;; esac
mkdir -p "$work/logs"

SVC_URL=https://github.com/taller2-fiufit/svc-trainings
SVC_COMMIT=73b066ec743debadc1ad386c5555e66440c97aac  # 2023-08-08, the repository's last
# The project's poetry.lock versions (fastapi 0.95.2, pydantic 1.10.9, httpx 0.23.3, which
# still has AsyncClient(app=...)); pytest, pytest-asyncio, SQLAlchemy, aiosqlite and alembic
# are raised to what pytest-memdb needs, for the original and swapped runs alike.
PINS=(
  fastapi==0.95.2 pydantic==1.10.9 httpx==0.23.3 'python-jose[cryptography]==3.3.0'
  boto3==1.26.155 'boto3-stubs[sqs]==1.26.155'
  'sqlalchemy[asyncio]>=2.0.30,<2.1' alembic==1.13.3 aiosqlite==0.22.1
  pytest==9.2.0 pytest-asyncio==1.5.0
)
RUN_TIMEOUT=600  # the app's upgrade_db() retries forever on an error: bound each run

log() { printf '== %s\n' "$*" >&2; }

# The project's git dir: $SVC_GIT, the local mirror if present, or a fresh clone.
gitdir=${SVC_GIT:-}
if [ -z "$gitdir" ] && [ -d /work/.mirror/taller2-fiufit+svc-trainings/repo ]; then
  gitdir=/work/.mirror/taller2-fiufit+svc-trainings/repo
fi
if [ -z "$gitdir" ]; then
  log "cloning $SVC_URL"
  git clone --quiet --bare "$SVC_URL" "$work/svc-trainings.git" >&2
  gitdir="$work/svc-trainings.git"
fi
[ -e "$gitdir/.git" ] && gitdir="$gitdir/.git"

if [ ! -x "$venv/bin/python" ]; then
  log "making $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c 'import fastapi, jose, mypy_boto3_sqs, alembic, pytest_memdb' 2>/dev/null; then
  log "installing pytest-memdb (editable) and the project's dependencies into $venv"
  "$py" -m pip install --quiet -e "$repo" "${PINS[@]}" >&2
fi

orig="$work/orig/svc-trainings" swap="$work/swap/svc-trainings"
rm -rf "$orig" "$swap"
mkdir -p "$orig" "$swap"
git --git-dir="$gitdir" archive "$SVC_COMMIT" | tar -x -C "$orig"
git --git-dir="$gitdir" archive "$SVC_COMMIT" | tar -x -C "$swap"
{ echo; cat "$here/svc_trainings_memdb.ini"; } >>"$swap/pytest.ini"

status=0
table=()

# run_suite MODE DIR [pytest args...]: RUNS runs, appends a table row, sets last_passed
run_suite() {
  local mode=$1 dir=$2
  shift 2
  local i times=() passed failed errors rlog tfile first_passed=
  for ((i = 1; i <= runs; i++)); do
    rlog="$work/logs/$mode.$i.log" tfile="$work/logs/$mode.$i.time"
    find "$dir" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    if [ "$mode" = original ]; then
      rm -rf "$dir/local.db"
    else
      rm -rf "$dir/local.db" && mkdir "$dir/local.db"
    fi
    (
      cd "$dir"
      TIMEFORMAT=%R
      { time timeout "$RUN_TIMEOUT" "$py" -m pytest -p no:cacheprovider "$@" >"$rlog" 2>&1 || true; } 2>"$tfile"
    )
    times+=("$(tail -n 1 "$tfile")")
    passed=$(tail -n 1 "$rlog" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
    failed=$(tail -n 1 "$rlog" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
    errors=$(tail -n 1 "$rlog" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+' || echo 0)
    log "$mode run $i: $(tail -n 1 "$rlog" | tr -d '=' | sed 's/^ *//') (wall ${times[-1]} s)"
    if [ "$mode" != original ] && { [ ! -d "$dir/local.db" ] || [ -n "$(ls -A "$dir/local.db")" ]; }; then
      log "$mode run $i: the app's own database ./local.db was touched"
      status=1
    fi
    if [ -n "$first_passed" ] && [ "$passed" != "$first_passed" ]; then
      log "$mode: pass count changed between runs ($first_passed -> $passed)"
      status=1
    fi
    [ -n "$first_passed" ] || first_passed=$passed
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  last_passed=$passed
  medians[$mode]=$median
  table+=("$(printf '%-15s %6s %6s %6s %9s' "$mode" "$passed" "$failed" "$errors" "$median")")
}

declare -A medians
run_suite original "$orig"
orig_passed=$last_passed
[ "$orig_passed" -gt 0 ] || { log "the original suite passed nothing"; status=1; }
for iso in copy rollback; do
  run_suite "memdb-$iso" "$swap" --memdb-isolation "$iso"
  if [ "$last_passed" -lt "$orig_passed" ]; then
    log "memdb-$iso: $last_passed passed < $orig_passed in the original"
    status=1
  fi
done

echo
echo "pytest-memdb drop-in, svc-trainings @ ${SVC_COMMIT:0:12}: $runs runs per row," \
  "median wall seconds (logs: $work/logs)"
printf '%-15s %6s %6s %6s %9s %9s\n' mode passed failed errors median_s vs_orig
for row in "${table[@]}"; do
  mode=${row%% *}
  ratio=$(awk -v a="${medians[original]}" -v b="${medians[$mode]}" 'BEGIN {printf "%.2fx", a / b}')
  printf '%s %9s\n' "$row" "$ratio"
done
if [ "$status" -ne 0 ]; then
  echo "FAILED: see the messages above"
else
  echo "OK: every swapped run passed as many tests as the original; ./local.db untouched"
fi
exit "$status"

#!/usr/bin/env bash
# Build the single `cccatalog` binary from bake.spec: the one way it is built. examples/Dockerfile,
# docs/deploying.md and CI (.ci/run) all run this script.
#
#   tools/build_binary.sh                 # one file:   dist/cccatalog
#   tools/build_binary.sh --onedir        # one folder: dist/cccatalog/cccatalog (faster start-up)
#   tools/build_binary.sh --bench         # also time `--version` (median of 5) against `python -m cccatalog`
#   tools/build_binary.sh --python PY     # build with PY as it is (it has PyInstaller and cccatalog[postgres];
#                                         # $BUILD_PYTHON does the same: the tests build so, offline)
#   DIST=/tmp/out tools/build_binary.sh   # somewhere else (build files go to $WORK, default build/binary)
#
# Without --python it makes a bare virtualenv ($WORK/venv) with python3 (or $PYTHON) and installs
# PyInstaller ($PYINSTALLER_VERSION) and this tree with the `postgres` extra into it, so the binary
# carries exactly the declared dependencies, psycopg and its libpq included, whatever the machine has.
# Needs python3 with venv and pip, and binutils (objdump, strip). The binary needs git at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

onedir=0
bench=0
python=${BUILD_PYTHON:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --onedir) onedir=1 ;;
    --bench) bench=1 ;;
    --python) [ $# -ge 2 ] || { echo "error: --python needs an interpreter" >&2; exit 2; }
              python=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

dist=${DIST:-dist}
work=${WORK:-build/binary}
pyinstaller_version=${PYINSTALLER_VERSION:-6.22.3}

start=$(date +%s.%N)
if [ -z "$python" ]; then
  rm -rf "$work/venv"
  "${PYTHON:-python3}" -m venv "$work/venv"
  python="$work/venv/bin/python"
  "$python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    "pyinstaller==$pyinstaller_version" ".[postgres]"
fi
# The spec bundles psycopg: a binary built without it would die on the first postgresql:// URL.
"$python" -c 'import PyInstaller, psycopg, psycopg_binary' || {
  echo "error: $python lacks PyInstaller or psycopg[binary] (pip install pyinstaller '.[postgres]')" >&2
  exit 2
}

CCCATALOG_ONEDIR=$onedir "$python" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$dist" --workpath "$work/pyinstaller" bake.spec
end=$(date +%s.%N)

if [ "$onedir" = 1 ]; then
  bin="$dist/cccatalog/cccatalog"
  size=$(du -sb "$dist/cccatalog" | cut -f1)
else
  bin="$dist/cccatalog"
  size=$(stat -c %s "$bin")
fi
# The binary must start and carry the PostgreSQL driver; --version says which optional parts it has.
"$bin" --version | tee "$work/version.txt"
grep -qx 'postgres: yes' "$work/version.txt" || { echo "error: $bin has no PostgreSQL driver" >&2; exit 1; }
awk -v s="$size" -v t0="$start" -v t1="$end" -v b="$bin" \
  'BEGIN { printf "%s: %.1f MB, built in %.0f s\n", b, s / 1e6, t1 - t0 }'

if [ "$bench" = 1 ]; then
  if command -v hyperfine >/dev/null; then
    hyperfine -N --warmup 1 --runs 5 "$bin --version" "$python -m cccatalog --version"
  else
    for cmd in "$bin --version" "$python -m cccatalog --version"; do
      "$python" - "$cmd" <<'EOF'
import shlex, statistics, subprocess, sys, time
argv = shlex.split(sys.argv[1])
times = []
for _ in range(5):
    t = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    times.append(time.perf_counter() - t)
print(f"{sys.argv[1]}: median {statistics.median(times) * 1000:.0f} ms of 5")
EOF
    done
  fi
fi

#!/usr/bin/env bash
# Build the single `cccatalog` binary from bake.spec and print its size and version.
#
#   tools/build_binary.sh                 # one file:   dist/cccatalog
#   tools/build_binary.sh --onedir        # one folder: dist/cccatalog/cccatalog (faster start-up)
#   tools/build_binary.sh --bench         # also time `--version` (median of 5) against `python -m cccatalog`
#   DIST=/tmp/out tools/build_binary.sh   # somewhere else (build files go to $WORK, default build/)
#
# Needs `pip install pyinstaller` and binutils (objdump, strip). The binary needs git at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

onedir=0
bench=0
for arg in "$@"; do
  case "$arg" in
    --onedir) onedir=1 ;;
    --bench) bench=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
  esac
done

dist=${DIST:-dist}
work=${WORK:-build}
python=${PYTHON:-python3}

start=$(date +%s.%N)
CCCATALOG_ONEDIR=$onedir "$python" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$dist" --workpath "$work" bake.spec
end=$(date +%s.%N)

if [ "$onedir" = 1 ]; then
  bin="$dist/cccatalog/cccatalog"
  size=$(du -sb "$dist/cccatalog" | cut -f1)
else
  bin="$dist/cccatalog"
  size=$(stat -c %s "$bin")
fi
"$bin" --version
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

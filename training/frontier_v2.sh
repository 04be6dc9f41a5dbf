#!/usr/bin/env bash
# The acceleration frontier on organism v2, in one command (for a lent GPU machine, or a CPU):
#   bash training/frontier_v2.sh SIZE OUTDIR [WEIGHTS SHA256]
# 1. MagCache ratios (training/frontier_magcache.py, seeds 3 and 4; skipped if OUTDIR/magcache.json exists);
# 2. the run (training/frontier_run.py --organism SIZE), resumable: a rerun with the same OUTDIR continues with
#    the settings left; stops cleanly after the setting that crosses RUN_S seconds (default 480);
# 3. the scoring (training/frontier_measure_v2.py) when MEASURE=1 and the run is complete.
# Without WEIGHTS: the packaged weights file of SIZE (its digest from weights/checksums_v2.json); WEIGHTS=random:
# untrained weights (development). Extra run options in RUN_ARGS (e.g. "--quick", "--only a,b").
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:?usage: frontier_v2.sh SIZE OUTDIR [WEIGHTS SHA256]}; OUTDIR=${2:?OUTDIR}; W=${3:-}; D=${4:-}
PY=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR"
ORG=(--organism "$SIZE")
if [ "$W" = random ]; then ORG+=(--random-weights); elif [ -n "$W" ]; then ORG+=(--weights "$W" --sha256 "$D"); fi
T0=$(date +%s)
if [ ! -f "$OUTDIR/magcache.json" ] && [ "${MAGCACHE:-1}" = 1 ]; then
  $PY training/frontier_magcache.py "${ORG[@]}" --out "$OUTDIR/magcache.json" | tail -n 3
  echo "magcache: $(( $(date +%s) - T0 )) s"
fi
$PY training/frontier_run.py "${ORG[@]}" --out "$OUTDIR/run.json" --latents "$OUTDIR/lat" \
  --mag-ratios "$OUTDIR/magcache.json" --max-seconds "${RUN_S:-480}" ${RUN_ARGS:-} | tee -a "$OUTDIR/run.log"
echo "run: $(( $(date +%s) - T0 )) s"
if [ "${MEASURE:-0}" = 1 ] && ! grep -q "^stopping after" <(tail -n 1 "$OUTDIR/run.log"); then
  $PY training/frontier_measure_v2.py --run "$OUTDIR/run.json" --latents "$OUTDIR/lat" --csv "$OUTDIR/scored.csv" \
    --json "$OUTDIR/scored.json" --markdown "$OUTDIR/scored.md" ${MEASURE_ARGS:-}
  echo "measure: $(( $(date +%s) - T0 )) s"
fi

#!/usr/bin/env bash
# Organism v2 on a lent GPU machine (the `device` tool): one call of a few stages under one deadline, every
# result packed into $OUT as it is made (so a call cut at its limit still returns what it finished).
#   bash training/device_v2.sh DEADLINE_S STAGE...
# Stages: vae, encode, small, large, samples_small, samples_large, frontier_small, frontier_large, bench_writer,
# bench_blocks.
# Budgets come from the environment (VAE_S, ENCODE_S, SMALL_S, LARGE_S; see train_organism_v2.sh); a stage
# that cannot finish before DEADLINE_S (seconds from the start) is skipped with a line saying so.
# Wheels the machine lacks travel in .whl (carry it); the work folder WORK (default .orgv2, git-ignored) keeps
# the latents between calls while the machine stays warm. Files larger than 15 MB come back split
# (NAME.part-00, -01, …): `cat NAME.part-* > NAME` here, then check the digest in checksums_v2.json; JSON, logs and
# the digests come in logs.tgz (at most 8 files come back: the large call sends 4 parts + 3 files).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?run this through the device tool (OUT unset)}"
DEADLINE=$1; shift
T0=$(date +%s)
WORK=${WORK:-.orgv2}
mkdir -p "$WORK"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  | tee -a "$OUT/machine.txt"

left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
back() {  # back FILE...: each file to $OUT (split above 15 MB)
  for f in "$@"; do
    [ -f "$f" ] || continue
    if [ "$(stat -c %s "$f")" -gt 15000000 ]; then split -b 15000000 -d "$f" "$OUT/$(basename "$f").part-"
    else cp "$f" "$OUT/"; fi
  done
}
logs() {  # every log, JSON and PNG of the call (the work folder's and the package's v2 records) in one file
  tar czf "$OUT/logs.tgz" $(ls "$WORK"/*.log "$WORK"/*.json "$WORK"/*.png latent_probe/organism/weights/*_v2*.json \
    2>/dev/null) 2>/dev/null; }
run() {  # run NEED_S NAME CMD...: the stage when NEED_S seconds are left, cut at what is left
  local need=$1 name=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then echo "SKIPPED $name: $(left) s left, needs $need" | tee -a "$WORK/stages.log"; return 1; fi
  local s=$(date +%s)
  timeout "$(( $(left) - 5 ))" "$@" > "$WORK/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - s )) s" | tee -a "$WORK/stages.log"; tail -n 4 "$WORK/$name.log"
  logs; return $rc
}
VAE=$WORK/organism_v2_vae.safetensors
LAT=$WORK/latents.pt
W=latent_probe/organism/weights
for stage in "$@"; do
  case $stage in
    vae) run $(( ${VAE_S:-240} + 60 )) vae python3 training/train_vae_v2.py --budget-s "${VAE_S:-240}" --batch 32 \
           --frames 17 --out "$WORK" && back "$VAE" ;;
    encode) [ -f "$LAT" ] && { echo "latents kept from the last call"; continue; }
      run $(( ${ENCODE_S:-60} + 30 )) encode python3 training/train_organism_v2.py --size small --vae "$VAE" \
        --latents "$LAT" --encode "${CLIPS:-32768}" --encode-budget-s "${ENCODE_S:-60}" --encode-only --out "$WORK" ;;
    small|large)
      budget=$([ $stage = small ] && echo "${SMALL_S:-150}" || echo "${LARGE_S:-240}")
      extra=$([ $stage = small ] && echo "--batch 128" || echo "--batch 64 --lr 3e-4 --expert-lr 1e-4")
      dest=$([ $stage = small ] && echo "$W" || echo "$WORK")
      t=$(date +%s)
      if ! run $(( budget + 75 )) $stage python3 training/train_organism_v2.py --size $stage --vae "$VAE" \
          --latents "$LAT" --budget-s "$budget" $extra --compile --checksums "$W/checksums_v2.json" --out "$dest"; then
        # torch.compile failing on this machine must not cost the stage: once more, eager, in what is left
        budget=$(( budget - ($(date +%s) - t) )); [ $budget -gt 60 ] && mv "$WORK/$stage.log" "$WORK/${stage}_compiled.log" \
          && run $(( budget + 60 )) $stage python3 training/train_organism_v2.py --size $stage --vae "$VAE" \
          --latents "$LAT" --budget-s "$budget" $extra --checksums "$W/checksums_v2.json" --out "$dest"
      fi
      back "$dest/organism_v2_$stage.safetensors"; logs ;;   # its JSON and the digests come in logs.tgz
    samples_small|samples_large)
      size=${stage#samples_}
      wflag=$([ $size = large ] && echo "--weights $WORK/organism_v2_large.safetensors" || echo "")
      run 60 $stage python3 training/organism_v2_samples.py --size $size $wflag --seeds 8 --latents "$LAT" \
        --png "$WORK/organism_v2_$size.png" --json "$WORK/organism_v2_${size}_samples.json" ;;
    frontier_small|frontier_large)  # the v2 frontier (training/frontier_v2.sh) in what is left, scored here
      size=${stage#frontier_}; fd=$WORK/$stage
      wflag=$([ $size = large ] && echo "$WORK/organism_v2_large.safetensors $(python3 -c "import json;print(json.load(open('$W/checksums_v2.json'))['organism_v2_large.safetensors'])")" || echo "")
      run 150 $stage env RUN_S=$(( $(left) - ${SCORE_S:-90} )) bash training/frontier_v2.sh $size "$fd" $wflag
      [ -f "$fd/run.json" ] && run 40 ${stage}_score python3 training/frontier_measure_v2.py --run "$fd/run.json" \
        --latents "$fd/lat" --csv "$fd/scored.csv" --json "$fd/scored.json" --markdown "$fd/scored.md"
      tar czf "$OUT/$stage.tgz" -C "$fd" $(cd "$fd" && ls run.json run.log magcache.json scored.* 2>/dev/null) ;;
    bench_writer)  # the writer before issue 18 (.old4ff: `git archive 4ff566a latent_probe`) and now, alternating
      for i in 1 2 3; do
        run 40 writer_old_$i env PYTHONPATH=/tmp/site:$PWD/.old4ff python3 .old4ff/benchmarks/bench_capture.py --writer-only \
          --writer-steps 20 --repeats 3 --dir /tmp
        run 40 writer_new_$i python3 benchmarks/bench_capture.py --writer-only --writer-steps 20 --repeats 3 --dir /tmp
      done ;;
    bench_blocks) run 150 bench_blocks python3 benchmarks/bench_blocks.py --size a14b --device cuda \
        --layers "${BLOCK_LAYERS:-10}" --steps "${BLOCK_STEPS:-2}" --reps "${BLOCK_REPS:-3}" ;;
    *) echo "unknown stage $stage" >&2 ;;
  esac
done
logs
echo "done in $(( $(date +%s) - T0 )) s: $*"

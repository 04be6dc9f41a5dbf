#!/usr/bin/env bash
# Organism v2 on one CUDA GPU (H100/H200), from the repository root, ≈ 40 min in all (each training ≤ 15 min):
#   VAE (7 min) → encode 32,768 clips → DiT small (10 min) → DiT large (14 min) → samples + motion tables.
#   bash training/train_organism_v2.sh                 # OUT=/tmp/orgv2 PYTHON=python by default
# Writes latent_probe/organism/weights/organism_v2_small.safetensors (+ .json) and checksums_v2.json; the large
# file goes to $LARGE_DIR (default $OUT: it is ≈ 51 MB, outside the package; the tests skip it when absent),
# its digest into the same checksums_v2.json. Logs, JSON and PNGs in $OUT; copy the PNGs/JSON you keep to docs/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/orgv2}
W=latent_probe/organism/weights
LARGE_DIR=${LARGE_DIR:-$OUT}
CHECKSUMS=$W/checksums_v2.json
mkdir -p "$OUT" "$LARGE_DIR"
export PYTHONPATH=$PWD
VAE=$OUT/organism_v2_vae.safetensors
LAT=$OUT/latents.pt

"$PY" training/train_vae_v2.py --budget-s "${VAE_S:-420}" --batch 32 --frames 17 --out "$OUT" 2>&1 | tee "$OUT/vae.log"
"$PY" training/train_organism_v2.py --size small --vae "$VAE" --latents "$LAT" --encode "${CLIPS:-32768}" \
    --budget-s "${SMALL_S:-600}" --batch 128 --compile --checksums "$CHECKSUMS" --out "$W" 2>&1 | tee "$OUT/small.log"
"$PY" training/train_organism_v2.py --size large --vae "$VAE" --latents "$LAT" \
    --budget-s "${LARGE_S:-840}" --batch 64 --lr 3e-4 --expert-lr 1e-4 --compile --checksums "$CHECKSUMS" \
    --out "$LARGE_DIR" 2>&1 | tee "$OUT/large.log"
"$PY" training/organism_v2_samples.py --size small --seeds 8 --latents "$LAT" \
    --png "$OUT/organism_v2_small.png" --json "$OUT/organism_v2_small_samples.json" 2>&1 | tee "$OUT/samples_small.log"
"$PY" training/organism_v2_samples.py --size large --weights "$LARGE_DIR/organism_v2_large.safetensors" --seeds 8 \
    --latents "$LAT" --png "$OUT/organism_v2_large.png" --json "$OUT/organism_v2_large_samples.json" 2>&1 \
    | tee "$OUT/samples_large.log"
echo "done: $W/organism_v2_small.safetensors, $LARGE_DIR/organism_v2_large.safetensors, $CHECKSUMS"

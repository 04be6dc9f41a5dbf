#!/usr/bin/env bash
# Organism v2 on one CUDA GPU (H100/H200), from the repository root. Stages, each under 10 minutes (so each fits
# one device command), all by default in this order:
#   vae      train the causal VAE (VAE_S=420 s) + calibrate + PSNR / temporal error / channel use  → $OUT
#   encode   render and encode CLIPS=32768 clips once                                               → $OUT/latents.pt
#   small    DiT small on the latents (SMALL_S=480 s, batch 128, compiled)                          → weights/
#   large    DiT large on the latents (LARGE_S=540 s, batch 64, compiled)                           → $LARGE_DIR
#   samples  8 samples a class of each trained size against the motion model, PNG + JSON          → $OUT
#   bash training/train_organism_v2.sh                    # everything (≈ 40 min)
#   bash training/train_organism_v2.sh vae encode         # some stages
# Writes latent_probe/organism/weights/organism_v2_small.safetensors (+ .json) and checksums_v2.json; the large
# file goes to $LARGE_DIR (default $OUT: ≈ 51 MB, outside the package; the tests skip it when absent), its digest
# into the same checksums_v2.json. Copy the PNGs / JSON you keep to docs/ and fill docs/organism.md's table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/orgv2}
W=latent_probe/organism/weights
LARGE_DIR=${LARGE_DIR:-$OUT}
CHECKSUMS=$W/checksums_v2.json
VAE=$OUT/organism_v2_vae.safetensors
LAT=$OUT/latents.pt
mkdir -p "$OUT" "$LARGE_DIR"
export PYTHONPATH=$PWD
STAGES=${*:-vae encode small large samples}

for stage in $STAGES; do
  case $stage in
    vae)
      "$PY" training/train_vae_v2.py --budget-s "${VAE_S:-420}" --batch 32 --frames 17 --out "$OUT" 2>&1 \
        | tee "$OUT/vae.log" ;;
    encode)
      rm -f "$LAT"
      "$PY" training/train_organism_v2.py --size small --vae "$VAE" --latents "$LAT" --encode "${CLIPS:-32768}" \
        --encode-only --out "$OUT" 2>&1 | tee "$OUT/encode.log" ;;
    small)
      "$PY" training/train_organism_v2.py --size small --vae "$VAE" --latents "$LAT" --budget-s "${SMALL_S:-480}" \
        --batch 128 --compile --checksums "$CHECKSUMS" --out "$W" 2>&1 | tee "$OUT/small.log" ;;
    large)
      "$PY" training/train_organism_v2.py --size large --vae "$VAE" --latents "$LAT" --budget-s "${LARGE_S:-540}" \
        --batch 64 --lr 3e-4 --expert-lr 1e-4 --compile --checksums "$CHECKSUMS" --out "$LARGE_DIR" 2>&1 \
        | tee "$OUT/large.log" ;;
    samples)
      "$PY" training/organism_v2_samples.py --size small --seeds 8 --latents "$LAT" \
        --png "$OUT/organism_v2_small.png" --json "$OUT/organism_v2_small_samples.json" 2>&1 | tee "$OUT/samples_small.log"
      if [ -f "$LARGE_DIR/organism_v2_large.safetensors" ]; then
        "$PY" training/organism_v2_samples.py --size large --weights "$LARGE_DIR/organism_v2_large.safetensors" \
          --seeds 8 --latents "$LAT" --png "$OUT/organism_v2_large.png" --json "$OUT/organism_v2_large_samples.json" \
          2>&1 | tee "$OUT/samples_large.log"
      fi ;;
    *) echo "unknown stage $stage (vae, encode, small, large, samples)" >&2; exit 2 ;;
  esac
done
echo "done: $STAGES"

#!/bin/sh
# scripts/make_model.sh BUILD OUT
#
# Trains the shipped default model on phantom studies, calibrates its
# decision thresholds on a separate phantom set, and evaluates it on a
# held-out phantom set (other seeds, held-out phrasings): `make model`.
# Then trains the three other rows of the paper's Table 1 (vanilla CLIP,
# +AT, +AT+OT without the dictionary) the same way and evaluates all four
# side by side.  Everything is deterministic for the seeds below.
# Writes
#   OUT/default.ctglip          the model (+AT+OT+dictionary, calibrated)
#   OUT/default.eval.json       its evaluation report (with the table rows)
#   OUT/default.table.md        the Table-1 layout of all four rows
#   OUT/default.train.csv       its training log
# Knobs (environment): MODEL_STEPS, MODEL_STAGE1, MODEL_TRAIN_CASES,
# MODEL_CAL_CASES, MODEL_EVAL_CASES, MODEL_THREADS, MODEL_TABLE (0: the
# default model only), MODEL_WORK (scratch folder).
set -eu
B=$1
OUT=$2
W=${MODEL_WORK:-$B/model-work}
steps=${MODEL_STEPS:-6000}
stage1=${MODEL_STAGE1:-2000}
ntrain=${MODEL_TRAIN_CASES:-160}
ncal=${MODEL_CAL_CASES:-24}
neval=${MODEL_EVAL_CASES:-64}
threads=${MODEL_THREADS:-2}
table=${MODEL_TABLE:-1}
rm -rf "$W"
mkdir -p "$W" "$OUT"

phantoms() { # seed count dir text
    "$B/ctglip" phantom --seed "$1" --count "$2" --matrix 128 --fov random --abnormal-rate 0.7 \
        --no-dicom --text "$4" --threads "$threads" --quiet --out "$W/$3"
}
train() { # name extra-options...
    name=$1
    shift
    echo "== training $name ($steps steps, $stage1 segmentation-only)"
    "$B/ctglip-train" pretrain --data "$W/train/manifest.jsonl" --out "$W/$name" --seed 1 \
        --steps "$steps" --stage1-steps "$stage1" --batch 2 --patch 32 --spacing 6 \
        --width 8 --depth 2 --embed 128 --lr 5e-3 --warmup 100 --threads "$threads" \
        --log-every 500 "$@"
    echo "== calibrating $name on the calibration set"
    "$B/ctglip-train" calibrate --model "$W/$name/model.ctglip" --data "$W/cal/manifest.jsonl" \
        --out "$W/$name/calibrated.ctglip" --text train --threads "$threads"
}

echo "== phantoms: $ntrain for training (seed 100), $ncal for calibration (seed 500)," \
     "$neval held out (seed 900, held-out phrasings)"
phantoms 100 "$ntrain" train train
phantoms 500 "$ncal" cal train
phantoms 900 "$neval" heldout heldout

train default --loss otat --dict 512
rows="+AT+OT+dictionary=$W/default/calibrated.ctglip"
if [ "$table" = 1 ]; then
    train clip --loss clip
    train at --loss at --dict 0
    train atot --loss otat --dict 0
    rows="vanilla CLIP=$W/clip/calibrated.ctglip,+AT=$W/at/calibrated.ctglip,+AT+OT=$W/atot/calibrated.ctglip,$rows"
fi
echo "== evaluation on the held-out set"
"$B/ctglip-train" eval --model "$W/default/calibrated.ctglip" --data "$W/heldout/manifest.jsonl" \
    --out "$W/eval.json" --text heldout --threads "$threads" \
    --table "$W/table.md" --rows "$rows"
cp "$W/default/calibrated.ctglip" "$OUT/default.ctglip"
cp "$W/eval.json" "$OUT/default.eval.json"
cp "$W/table.md" "$OUT/default.table.md"
cp "$W/default/train.csv" "$OUT/default.train.csv"
echo "== wrote $OUT/default.ctglip, default.eval.json, default.table.md, default.train.csv"
cat "$OUT/default.table.md"

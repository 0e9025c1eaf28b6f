#!/bin/bash
# Session 17's device call: three 7-minute fine-tunes of the Lite2 candidate side by side on one H200:
#   a: the encoder trains with the colour loss and keeps its distance to ImageNet's view (--encoder-distill-weight 2)
#   b: the encoder trains with the colour loss alone (the control)
#   c: the decoder alone on the frozen encoder (the prepared command of "Ready for a GPU", at the GPU's scale)
# Rehearse on a CPU: PATH=$PWD/.venv/bin:$PATH DEVICE="--device cpu" WORKERS=1 LIMIT=0.7 BATCH=8 OUT=/tmp/out \
#   bash docs/training/gpu-call-session17.sh
export PYTHONUNBUFFERED=1
P=gpu-data
M=models/weights/candidates/campaign-2026-12-04-lite2.pt
DEVICE=${DEVICE:---device cuda --bf16}; WORKERS=${WORKERS:-4}; LIMIT=${LIMIT:-7}; BATCH=${BATCH:-256}
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; free -g
 python3 -c 'import torch; print(torch.__version__)') > $OUT/env.txt 2>&1
train() {  # train NAME MINUTES LOADERS EXTRA...
  local name=$1 minutes=$2 loaders=$3; shift 3
  python3 -m tools train $DEVICE --init $M \
    --data $P/tiny_imagenet.zip --data $P/faces_utk.zip --data $P/scenes_intel.zip:1.5 --data $P/bsds500.zip:8 \
    --data $P/flowers.zip --data $P/clothing.zip:0.5 --val-split 0.02 --val-crops 192 \
    --steps 100000 --batch-size $BATCH --crop 96 --min-object-side 128 --loss mix --l1-weight 10 --ema-decay 0.999 \
    --lr 5e-4 --encoder-lr-scale 0.2 --warmup-steps 200 --eval-every 250 --save-every 100000 \
    --time-limit-min $minutes --anneal-by-time --loader-workers $loaders "$@" --run-dir /tmp/$name >> $OUT/$name.log 2>&1
}
run() {  # run NAME EXTRA...: a run; if it fails in its first 150 s, once more with the loop sampling its own
  local name=$1; shift; local start=$SECONDS
  train $name $LIMIT $WORKERS "$@" && return
  echo "== exit after $((SECONDS - start)) s" >> $OUT/$name.log
  if [ $((SECONDS - start)) -lt 150 ]; then
    rm -rf /tmp/$name; train $name $(python3 -c "print($LIMIT - 2.5)") 0 "$@"
  fi
}
run a --freeze-encoder-steps 0 --encoder-distill-weight 2 --teacher $M &
run b --freeze-encoder-steps 0 &
run c --freeze-encoder-steps 100000 &
wait
for r in a b c; do cp /tmp/$r/model-best.pt $OUT/$r-best.pt; done
cp /tmp/a/model.pt $OUT/a-last.pt
ls -la /tmp/a /tmp/b /tmp/c >> $OUT/env.txt 2>&1

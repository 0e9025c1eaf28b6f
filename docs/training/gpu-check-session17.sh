#!/bin/bash
# Session 17's second device call: the GPU checks the README lists as not verified, and one run's pace alone.
# As run in session 17 its pytest line lacked '-p no:tests.services' and stopped at the suite's service fixtures,
# which import boto3 (absent on the device); with it the GPU test needs only torch (tried here, on the CPU).
export PYTHONUNBUFFERED=1
P=gpu-data; M=models/weights/candidates/campaign-2026-12-04-lite2.pt; DEV=${DEV:-cuda}
DATA="--data $P/tiny_imagenet.zip --data $P/faces_utk.zip --data $P/scenes_intel.zip --data $P/flowers.zip"
(timeout 40 python3 -m pytest -q -p no:cacheprovider -p no:tests.services tests/test_train.py -k "gpu_in_bf16" 2>&1 | tail -5) > $OUT/checks.log
echo "== adapt-encoder" >> $OUT/checks.log
timeout 60 python3 -m tools adapt-encoder $M --teacher $M $DATA --val-split 0.02 --val-crops 64 --steps 40 \
  --batch-size 64 --eval-every 40 --log-every 10 --device $DEV --threads 2 --run-dir /tmp/adapt >> $OUT/checks.log 2>&1
echo "== adapt-encoder rc $?" >> $OUT/checks.log
echo "== train alone, --threads 2" >> $OUT/checks.log
timeout 120 python3 -m tools train --device $DEV --bf16 --init $M $DATA --val-split 0.02 --val-crops 192 --steps 400 \
  --batch-size 256 --crop 96 --min-object-side 128 --loss mix --ema-decay 0.999 --freeze-encoder-steps 400 \
  --eval-every 100 --log-every 25 --save-every 100000 --loader-workers 12 --threads 2 --run-dir /tmp/pace \
  >> $OUT/checks.log 2>&1
echo "== train rc $?" >> $OUT/checks.log
grep -v "^\s" $OUT/checks.log | tail -60

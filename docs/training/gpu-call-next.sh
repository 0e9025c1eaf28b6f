#!/bin/bash
# The next device call, prepared in session 18 from what session 17's found (docs/training.md, "What the next session
# should do", 0 and 4). One call of about 11 minutes:
#   check: the GPU tests that run without PyAV, TensorRT and the service's packages (tests/test_train.py's resume
#      on the CPU of a bf16 GPU run, which session 17 could not run; the CUDA engine's graphs, fp16 and batch
#      sizing; the colour maths on CUDA), beside the runs
#   a: session 17's run a (the encoder trained for colour, its distance to ImageNet's view kept: W 2, encoder at 0.2x
#      the rate) on a pack of three sources at 25% each (session 17's: six at 7%), to see whether more data per pass
#      is what it lacked
#   b: the same data with a larger distance weight (W 4) and a slower encoder (0.1x): the other remedy
# Both keep the encoder's BatchNorm statistics as they came (tools train's default since session 18; session 17's
# runs re-estimated them from the batches, which alone knocks the candidate under gray within 20 CPU steps).
# Both side by side for LIMIT minutes, with two torch threads each and a validation every 1,000 steps (one took about
# 25 s there; each validation line now ends with its seconds, the network's and the scores' apart, to show whether
# two threads cure that), the cosine ending with the minutes (--anneal-by-time). Bring back: model-best.pt of each,
# a's last model.pt, the logs. Then, here: promote each with the candidate's rendering, its temperature chosen on
# the whole split with the judge beside it (one command a model; rehearsed on a CPU run's a-best.pt in session 29):
#   D=../shared/data/train; python -m tools promote a-best.pt -o a.pt --rebalance 0 --render-size 224 \
#       --min-render-size 192 --highlight-rolloff 80,95,0.4 --choose temperature=0.38,0.45,0.5,0.55 \
#       --choose-val-split 0.02 --choose-on tiny_imagenet=$D/tiny_imagenet.zip --choose-on faces_utk=$D/faces_utk.zip \
#       --choose-on scenes_intel=$D/scenes_intel.zip --choose-on flowers=$D/flowers --judge-model \
#       ../shared/data/eval/judge --judge-classes ../shared/data/eval/tiny_imagenet_val/labels.csv
#
# The pack (24.8 MB on 2026-12-06: --budget-mb room fills what the checkout leaves of the 64 MiB that
# travel), then the call:
#   python -m tools pack-data --data ../shared/data/train/tiny_imagenet.zip --data ../shared/data/train/faces_utk.zip \
#       --data ../shared/data/train/scenes_intel.zip --val-split 0.02 --budget-mb room -o gpu-data
#   run(command="bash docs/training/gpu-call-next.sh", carry=["gpu-data"], timeout_s=780)
# Rehearse on a CPU (about 3 minutes; 70 s in session 29):
#   PATH=$PWD/.venv/bin:$PATH DEVICE="--device cpu" WORKERS=1 LIMIT=0.7 BATCH=8 EVAL=20 OUT=/tmp/out \
#       bash docs/training/gpu-call-next.sh
export PYTHONUNBUFFERED=1
P=gpu-data
M=models/weights/candidates/campaign-2026-12-04-lite2.pt
DEVICE=${DEVICE:---device cuda --bf16}; WORKERS=${WORKERS:-6}; LIMIT=${LIMIT:-9}; BATCH=${BATCH:-256}
EVAL=${EVAL:-1000}
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; free -g
 python3 -c 'import torch; print(torch.__version__)') > $OUT/env.txt 2>&1
if [ "${DEVICE#--device cuda}" != "$DEVICE" ]; then  # beside the runs: the GPU tests that need neither PyAV,
  # TensorRT nor the service's packages (none is on the device): training in bf16, CUDA graphs against eager, fp16
  # against fp32, the batch sized to free memory, the colour maths on CUDA
  (timeout 180 python3 -m pytest -q -rs -p no:cacheprovider -p no:tests.services tests/test_train.py \
    tests/test_gpu_engines.py tests/test_engines.py tests/test_color.py -k "gpu or cuda" 2>&1 | tail -15) \
    > $OUT/gpu-test.log &
fi
train() {  # train NAME EXTRA...
  local name=$1; shift
  python3 -m tools train $DEVICE --init $M \
    --data $P/tiny_imagenet.zip --data $P/faces_utk.zip --data $P/scenes_intel.zip:1.5 --val-split 0.02 \
    --val-crops 192 --steps 100000 --batch-size $BATCH --crop 96 --min-object-side 128 --loss mix --l1-weight 10 \
    --ema-decay 0.999 --lr 5e-4 --warmup-steps 200 --eval-every $EVAL --save-every 100000 \
    --time-limit-min $LIMIT --anneal-by-time --loader-workers $WORKERS --threads 2 --freeze-encoder-steps 0 \
    --teacher $M "$@" --run-dir /tmp/$name >> $OUT/$name.log 2>&1
  echo "== $name exit $?" >> $OUT/$name.log
}
train a --encoder-distill-weight 2 --encoder-lr-scale 0.2 &
train b --encoder-distill-weight 4 --encoder-lr-scale 0.1 &
wait  # the runs and the GPU tests
for r in a b; do cp /tmp/$r/model-best.pt $OUT/$r-best.pt; done
cp /tmp/a/model.pt $OUT/a-last.pt
ls -la /tmp/a /tmp/b >> $OUT/env.txt 2>&1
grep -h "validation at\|exit\|passed\|failed" $OUT/*.log | tail -40

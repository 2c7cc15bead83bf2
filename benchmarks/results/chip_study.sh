# run from the repository root; writes runs under /tmp/st24a-*, one CSV row per run on stdout
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
P=${PYTHON:-python}
C="--dataset embedded-mnist --hidden 128 --T 4 --epochs 3 --limit-train 2048 --limit-test 512 --batch-size 64 --dropout 0 --seed 3 --threads 1 --lr 2e-3"
CHIP="--weight-bits 4 --update-rounding stochastic --state-bits 8 --hw-threshold-noise 0.1 --hw-leak-noise 0.1"
for m in bp dfa opzo; do
  extra=""; [ $m = opzo ] && extra="--noise-position before"
  for s in float w4n w4s chip; do
    case $s in float) o="";; w4n) o="--weight-bits 4";; w4s) o="--weight-bits 4 --update-rounding stochastic";; chip) o="$CHIP";; esac
    rm -rf /tmp/st24a-$m-$s
    $P -m opzo train $C --method $m $extra $o --out /tmp/st24a-$m-$s > /dev/null 2>&1 || echo "FAIL $m $s"
    echo "$m,$s,$(tail -1 /tmp/st24a-$m-$s/metrics.jsonl | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["test_acc"], d["train_loss"], sep=",")')"
  done
done
rm -rf /tmp/st24a-bp-model
$P -m opzo train $C --method bp $CHIP --chip-grad-from model --out /tmp/st24a-bp-model > /dev/null 2>&1 || echo FAIL model
echo "bp,chip-grad-from-model,$(tail -1 /tmp/st24a-bp-model/metrics.jsonl | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["test_acc"], d["train_loss"], sep=",")')"

#!/usr/bin/env bash
# GPU smoke test of the real-scale path, prepared for one GPU machine with no hub access (budget: 8 minutes).
#   1. installs the gpu extra (DeepSpeed, vLLM; SKIP_INSTALL=1 skips it, PIP_FIND_LINKS=<wheelhouse> works offline)
#   2. builds a randomly initialised Qwen2.5-1.5B-shaped model locally (28 layers, hidden 1536, 12 heads / 2 KV
#      heads, MLP 8960, 151,936 embedding rows) with the rehearsal's locally trained tokenizer
#   3. a few SFT steps and GRPO steps with DeepSpeed ZeRO-2 (params/deepspeed/zero2.json), GRPO generating with
#      vLLM colocated; an evaluation batch through vLLM (evaluation.backend: vllm); an extraction pass
#   4. prints tokens/s per stage and the peak GPU memory (nvidia-smi, sampled every 0.5 s)
# Usage: bash benchmarks/gpu_smoke.sh            (from the repository root; writes under benchmarks/out/)
# The weights are random: only throughput, memory and "it runs" mean something here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/out/gpu_smoke}
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  timeout 240 "$PY" -m pip install -q -e ".[gpu]"
fi

nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/memory.log" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

stage() {  # stage NAME SECONDS PYTHON-CODE: run one stage under a time limit, report its wall time
  local name=$1 limit=$2 code=$3 t0
  t0=$(date +%s)
  timeout "$limit" "$PY" -c "$code" 2>&1 | tail -n 5
  echo "$name wall_s $(( $(date +%s) - t0 ))" | tee -a "$OUT/times.txt"
}

stage build 120 "
import torch
from transformers import AutoModelForCausalLM
from rlvr_utils.training import rehearsal
tok = rehearsal.build_tokenizer(rehearsal.corpus())
cfg = rehearsal.model_config(tok, hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                             intermediate_size=8960, vocab_size=151936)
cfg.max_position_embeddings = 4096
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
model.save_pretrained('$OUT/base'); tok.save_pretrained('$OUT/base')
print(f'{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters -> $OUT/base')
"

# The real-scale file with local model and data, a few steps, one process per GPU.
"$PY" - "$OUT" "$NGPU" <<'EOF'
import sys, yaml
out, ngpu = sys.argv[1], int(sys.argv[2])
raw = yaml.safe_load(open("params/qwen2.5-1.5b.yaml"))
raw.update(name="gpu-smoke", runs_dir=out)
raw["model"]["base"] = f"{out}/base"
raw["data"].update(sft_path="tests/data/numina/gsm8k_numina_cot.jsonl", grpo_path="tests/data/gsm8k/train_sample.jsonl",
                   eval_path="tests/data/gsm8k/test.jsonl", max_rows=300)
raw["sft"].update(steps=8, stop_metric=None, max_length=512, num_processes=ngpu, logging_steps=1)
raw["grpo"].update(steps=3, max_completion_length=256, num_processes=ngpu, save_steps=3, logging_steps=1)
raw["evaluation"].update(backend="vllm", n_problems=128, pass_problems=16, pass_k=[1, 8], max_new_tokens=256)
raw["extract"].update(n_problems=64, completions_from="gold", batch_size=16)
raw["variants"] = {"nulls": 0, "identical": False, "controls": []}
yaml.safe_dump(raw, open(f"{out}/smoke.yaml", "w"))
EOF
P="$OUT/smoke.yaml"

stage sft 150 "
from rlvr_utils.core import config, artifacts; from rlvr_utils.training import train
cfg = config.load('$P'); print(train.run_stage(cfg, 'sft'))
log = artifacts.read_json(cfg.path('metrics', 'train_sft.json'))
tokens = max(e.get('num_tokens', 0) for e in log['log_history'])
print(f'SFT tokens/s {tokens / log[\"seconds\"]:.0f} ({tokens:.0f} tokens, {log[\"seconds\"]:.1f} s, {log[\"num_processes\"]} processes)')
"
stage grpo 180 "
from rlvr_utils.core import config, artifacts; from rlvr_utils.training import train
cfg = config.load('$P'); print(train.run_stage(cfg, 'rlvr'))
log = artifacts.read_json(cfg.path('metrics', 'train_rlvr.json'))
tokens = max(e.get('num_tokens', 0) for e in log['log_history'])
print(f'GRPO tokens/s {tokens / log[\"seconds\"]:.0f} (prompt + completion, {log[\"seconds\"]:.1f} s, vLLM colocated)')
"
stage eval 120 "
import time
from rlvr_utils.core import config; from rlvr_utils.training import data; from rlvr_utils.evaluation import evaluate
cfg = config.load('$P'); t = time.time()
print(evaluate.run(cfg, 'sft')); seconds = time.time() - t
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(cfg.model_ref('sft'))
rows = data.read_jsonl(cfg.path('eval', 'sft_greedy.jsonl'))
n = sum(len(tok(r['completion'])['input_ids']) for r in rows)
print(f'eval (vLLM): greedy {len(rows)} answers, {n} generated tokens; {n / seconds:.0f} tokens/s lower bound (incl. pass@8 and start-up)')
"
stage extract 90 "
import time
from rlvr_utils import activations as store; from rlvr_utils.core import config; from rlvr_utils.training import data
cfg = config.load('$P'); data.prepare_eval_set(cfg)
cache = activations.run_token_cache(cfg); t = time.time()
activations.run_extract(cfg, 'sft', cache)
n = sum(len(s) for s in cache.sequences)
print(f'extract tokens/s {n / (time.time() - t):.0f} ({len(cache)} sequences, {n} tokens, incl. loading)')
"

kill $SAMPLER 2>/dev/null || true
echo "peak GPU memory (MiB, largest over GPUs): $(sort -n "$OUT/memory.log" | tail -n 1)"
cat "$OUT/times.txt"

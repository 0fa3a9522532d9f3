#!/usr/bin/env bash
# CUDA smoke run of the experiment runner on the tiny models (bfloat16 on the GPU): every stage of
# compare / sweep / stats adapter on a real device. Usage: bench/experiments_smoke.sh OUT_DIR
set -euo pipefail
out=${1:?usage: bench/experiments_smoke.sh OUT_DIR}
gpu=(--profile tiny --device cuda --dtype bfloat16 --steps 4 --no-progress)
img=examples/house.png
prompt="A simple cartoon house with a red roof"
for e in vl_only_vs_qwen3 splice_vs_vl outlier_masking normalization timestep_alpha; do
  llm-dit compare --experiment "$e" --quick --image "$img" --prompt "$prompt" --out "$out/$e" --vqa on "${gpu[@]}"
done
llm-dit compare --experiment caption_alignment --quick --image "$img" --out "$out/caption_alignment" "${gpu[@]}"
llm-dit sweep --image "$img" --prompt "$prompt" --alphas 0,0.5 --layers=-2,-6 --blends adain_per_dim \
  --out "$out/sweep" "${gpu[@]}"
llm-dit stats adapter --profile tiny --device cuda --dtype bfloat16 --out "$out/adapter.safetensors"
llm-dit generate --image "$img" --prompt "$prompt" --adapter "$out/adapter.safetensors" --out "$out/adapter.png" \
  --profile tiny --device cuda --dtype bfloat16 --steps 4
python - "$out" <<'PY'
import json, sys, pathlib
for m in sorted(pathlib.Path(sys.argv[1]).glob("*/metadata.json")):
    d = json.loads(m.read_text())
    r = d["results"][-1]
    print(f"{d['experiment']:20s} {d['counts']} device {d['config']['runtime']['device']} "
          f"dtype {d['config']['runtime']['dtype']} metrics {sorted(r['metrics'])}")
PY

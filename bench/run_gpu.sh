#!/usr/bin/env bash
# All GPU benchmarks, in groups that each fit one 10-minute call of a lent GPU machine:
#   bench/run_gpu.sh single   OUT   # benchmark 1 (builds the full-size models first, ~1 min)
#   bench/run_gpu.sh fp8      OUT   # benchmark 6 (about 5 minutes with the build)
#   bench/run_gpu.sh pipeline OUT   # benchmarks 2, 3 and 5
#   bench/run_gpu.sh memory   OUT   # benchmark 4 (a fresh process per profile), + a low_vram caption smoke run
#   bench/run_gpu.sh multi    OUT   # sweeps at scale: 1 worker per GPU (every GPU of the host)
# Each script writes OUT/NAME.json and OUT/NAME.md; logs go to OUT/NAME.log.
set -uo pipefail
group=${1:?usage: bench/run_gpu.sh single|fp8|pipeline|memory|multi OUT}
out=${2:?usage: bench/run_gpu.sh GROUP OUT}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
run() { local name=$1; shift; echo "== $name $(date +%T)"; python3 "$here/$name.py" --out "$out" "$@" \
          > "$out/$name.log" 2>&1; local rc=$?; tail -n 25 "$out/$name.log"; echo "== $name rc=$rc $(date +%T)"; }
case $group in
  single)   run single_image ;;
  fp8)      run fp8 --repeats 3 --warmup 1 ;;
  pipeline) run vl_extraction; run experiment_overhead --warmup 0 --repeats 2; run batch_throughput --repeats 3 ;;
  memory)   run memory_profiles
            echo "== low_vram caption smoke (tiny models)"
            python3 -m llm_dit compare --experiment caption_alignment --quick --image "$here/../examples/house.png" \
              --profile low_vram --z-image tiny --vl-model tiny --width 256 --height 256 --steps 4 --vqa on \
              --no-progress --out "$out/smoke_low_vram_caption" 2>&1 | tail -n 4 ;;
  multi)    run multi_gpu ;;
  *) echo "unknown group $group"; exit 2 ;;
esac

"""CUDA smoke run of the web app's stack on a GPU: the job queue, the model pool and its memory policy
(tiny models in bfloat16). A check that the CUDA paths run and that GPU memory comes back when the
pool lets models go, not a benchmark.

    python bench/web_smoke.py OUT_DIR
"""

from __future__ import annotations

import io
import sys
import time

import torch
from fastapi.testclient import TestClient
from PIL import Image

from llm_dit.config import resolve_config
from llm_dit.web.app import create_app


def mib() -> float:
    torch.cuda.synchronize()
    return round(torch.cuda.memory_allocated() / 2**20, 1)


def wait(c, job: dict) -> dict:
    while True:
        j = c.get(f"/api/jobs/{job['id']}").json()
        if j["state"] in ("done", "failed", "cancelled"):
            return j
        time.sleep(0.05)


def main(out: str) -> int:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    ok = True
    for keep in ("all", "one"):
        cfg = resolve_config("tiny", overrides={"runtime.device": "cuda", "runtime.dtype": "bfloat16",
                                                "runtime.keep_models": keep})
        app = create_app(cfg, f"{out}/{keep}")
        pool = app.server.queue.pool
        with TestClient(app) as c:
            buf = io.BytesIO()
            Image.new("RGB", (256, 192), (200, 40, 40)).save(buf, "PNG")
            ref = c.post("/api/uploads", files={"file": ("ref.png", buf.getvalue(), "image/png")}).json()["id"]
            print(f"[keep_models={keep}] start: {mib()} MiB allocated, loaded {pool.loaded()}")
            for label, path, body in [
                ("generate vl", "/api/generate", {"prompt": "a red house", "recipe": {"references": [{"image": ref}],
                                                                                     "blend": "adain_per_dim"}}),
                ("generate splice", "/api/generate", {"prompt": "a red house",
                                                      "recipe": {"backend": "splice", "references": [{"image": ref}]}}),
                ("sweep", "/api/sweeps", {"prompt": "a red house", "recipe": {"references": [{"image": ref}]},
                                          "axes": {"alpha": ["0.3", "0.7"]}}),
                ("experiment", "/api/experiments", {"experiment": "vl_only_vs_qwen3", "images": [ref],
                                                    "prompt": "a red house", "quick": True}),
            ]:
                t0 = time.perf_counter()
                r = c.post(path, json=body)
                job = wait(c, r.json()) if r.status_code == 202 else {"state": f"HTTP {r.status_code}: {r.text}"}
                ok &= job["state"] == "done" and not (job.get("result") or {}).get("failed")
                print(f"\n  {label:16s} {job['state']:9s} {time.perf_counter() - t0:6.2f} s  "
                      f"{mib():8.1f} MiB allocated, loaded {pool.loaded()}  {job.get('error') or ''}")
            if keep == "one":
                ok &= len([m for m in pool.loaded() if m != "splice"]) <= 1
            pool.release()
            # cuBLAS keeps a workspace per handle in the caching allocator (32 MiB on an H100): not a model
            workspace = mib()
            torch._C._cuda_clearCublasWorkspaces()
            after = mib()
            print(f"  released: {workspace} MiB allocated with cuBLAS workspaces, {after} MiB without")
            print(f"  loaded after release: {pool.loaded()}")
            ok &= after < 1.0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/web_smoke"))

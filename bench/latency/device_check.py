"""One device call: the engine on CUDA against the CPU (greedy tokens and logits of asa-small), and CUDA
decode speed. Run on the device machine: python3 bench/latency/device_check.py"""

import torch

from asa_runtime.generate import load, stream_generate

PROMPT = "It was a dark and stormy night, and the old house"
res = {}
for dev in ("cpu", "cuda"):
    lm = load("asa-small", device=dev)
    toks, last = [], None
    for r in stream_generate(lm, PROMPT, max_tokens=48, temp=0):
        toks.append(r.token)
        last = r
    res[dev] = toks
    print(dev, "gen tok/s", round(last.generation_tps, 1), "prompt tok/s", round(last.prompt_tps, 1))
same = sum(a == b for a, b in zip(res["cpu"], res["cuda"]))
print(f"greedy tokens equal on cpu and cuda: {same}/{len(res['cpu'])} (first divergence is fp rounding)")
lm = load("asa-small", device="cuda")
ids = lm.tokenizer.encode(open("asa_runtime/models/asa-small/README.md").read() * 40)[:8192]
for r in stream_generate(lm, ids, max_tokens=128, temp=0, ctx_size=8448):
    pass
print("cuda 8k prompt: prompt tok/s", round(r.prompt_tps), "gen tok/s", round(r.generation_tps, 1),
      "ttft", round(r.ttft, 3))
torch.cuda.synchronize()

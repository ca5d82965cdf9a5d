"""`asa-train train`: the training loop (nanoGPT-shaped) over a prepared folder.

AdamW, linear warmup + cosine decay to min_lr, gradient clipping, bf16 autocast on CUDA, periodic eval
logged to metrics.jsonl, resumable state (safetensors + JSON, never pickle), DDP under torchrun (nccl on
GPUs, gloo on CPU). Windows are drawn in a seeded permutation per epoch, so the data position is just
(epoch, cursor) and a resumed run sees the same batches an uninterrupted one would.

Run folder:
    metrics.jsonl     one JSON per log / eval event
    summary.json      the final numbers
    state/            resume point: model.safetensors, optim.safetensors, state.json
    model/            the final model folder (asa_runtime.checkpoint format)
"""
from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from asa_runtime.checkpoint import analyzer_info, save_checkpoint
from asa_runtime.config import MODES, PRESETS, ModelConfig, PlanConfig
from asa_runtime.model import Transformer

from .evaluate import autocast_for, perplexity, split_nll
from .prepare import Prepared

EVAL_SPLITS = ("valid", "wt2_valid", "wt2_test")


@dataclass
class TrainConfig:
    data: str
    out: str
    mode: str = "none"
    preset: str = "tiny"
    seed: int = 0
    batch_size: int = 32             # windows per step per process
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 100
    max_steps: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 20
    eval_every: int = 200
    eval_windows: int | None = 256   # per periodic eval of the held-out books (None: all); final eval uses all
    final_eval: tuple = EVAL_SPLITS
    ckpt_every: int = 0              # resume state every N steps (0: only at the end)
    time_budget_s: float | None = None
    device: str = "auto"
    amp: str = "auto"                # auto: bf16 autocast on CUDA, fp32 elsewhere; "fp32" to disable
    compile: bool = False
    resume: bool = False
    overrides: dict = field(default_factory=dict)   # ModelConfig fields over the preset

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {', '.join(PRESETS)}")


# ---- distributed -------------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_dist(device_kind: str) -> Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_kind == "cuda":
        torch.cuda.set_device(d.local_rank)
    return d


def all_sum(values: list[float], d: Dist, device) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps but MPS is not available")
    return torch.device(name)


# ---- data --------------------------------------------------------------------------------------------
class Windows:
    """Seeded per-epoch permutation of training windows; each rank takes its slice of every global batch."""

    def __init__(self, n: int, batch: int, seed: int, d: Dist, epoch: int = 0, cursor: int = 0):
        if n < batch * d.world:
            raise ValueError(f"only {n} training windows for a global batch of {batch * d.world}")
        self.n, self.batch, self.seed, self.d = n, batch, seed, d
        self.epoch, self.cursor = epoch, cursor

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def next(self) -> np.ndarray:
        g = self.batch * self.d.world
        if self.cursor + g > self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
        if getattr(self, "_perm_epoch", None) != self.epoch:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            self._perm_epoch = self.epoch
        perm = self._perm
        s = self.cursor + self.d.rank * self.batch
        self.cursor += g
        return np.sort(perm[s: s + self.batch])     # sorted: sequential-ish memmap reads


class Loader:
    """Background thread that reads the next batches (pinned on CUDA) while the GPU works."""

    def __init__(self, prep: Prepared, mode: str, windows: Windows, device: torch.device, depth: int = 3):
        self.prep, self.mode, self.windows, self.device = prep, mode, windows, device
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        pin = self.device.type == "cuda"
        while not self.stop:
            idx = self.windows.next()
            state = self.windows.state()
            x, y, keys = self.prep.batch("train", self.mode, idx)
            ts = [torch.from_numpy(a) for a in (x, y) + (() if keys is None else (keys,))]
            if pin:
                ts = [t.pin_memory() for t in ts]
            while not self.stop:
                try:
                    self.q.put((ts, state), timeout=0.5)
                    break
                except queue.Full:
                    continue

    def get(self):
        ts, state = self.q.get()
        ts = [t.to(self.device, non_blocking=True) for t in ts]
        return ts[0], ts[1], (ts[2] if len(ts) == 3 else None), state

    def close(self):
        self.stop = True
        self.t.join(timeout=5)


# ---- schedule / optimizer ----------------------------------------------------------------------------
def lr_at(step: int, c: TrainConfig) -> float:
    if step < c.warmup:
        return c.lr * (step + 1) / c.warmup
    p = min(1.0, (step - c.warmup) / max(1, c.max_steps - c.warmup))
    return c.min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (c.lr - c.min_lr)


def make_optimizer(model: torch.nn.Module, c: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]       # matrices and embeddings; norms' gains do not decay
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), fused=device.type == "cuda")


def model_config(c: TrainConfig, prep: Prepared) -> ModelConfig:
    if c.mode == "none":
        plan = PlanConfig(mode="none")
    else:
        if c.mode not in prep.meta.get("plans", {}):
            raise ValueError(f"{prep.root} has no {c.mode!r} plans; run `asa-train prepare --mode {c.mode}`")
        entry = prep.meta["plans"][c.mode]
        if entry.get("analyzer") is not None and entry["analyzer"] != analyzer_info():
            # the checkpoint records the package's analyzer; plans from another one would not match it
            raise ValueError(f"{prep.root}: {c.mode!r} plans were made with another analyzer; "
                             f"run `asa-train prepare --mode {c.mode}` again")
        plan = PlanConfig.from_dict(entry["config"])
    vocab = -(-prep.meta["vocab_size"] // 64) * 64     # padded to a multiple of 64 for the GPU
    kw = {**PRESETS[c.preset], "vocab_size": vocab, "max_seq_len": prep.ctx, **c.overrides, "plan": plan}
    return ModelConfig(**kw)


# ---- resume state (safetensors + JSON only) ----------------------------------------------------------
def save_state(root: Path, model, opt, meta: dict) -> None:
    from safetensors.torch import save_file

    tmp = root / "state.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        sd.pop("output.weight", None)
    save_file(sd, str(tmp / "model.safetensors"))
    osd = opt.state_dict()
    tensors = {f"{i}.{name}": t.detach().cpu().contiguous()
               for i, st in osd["state"].items() for name, t in st.items() if torch.is_tensor(t)}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(tmp / "optim.safetensors"))
    meta = {**meta, "param_groups": [dict(g) for g in osd["param_groups"]]}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
    final = root / "state"
    if final.exists():
        old = root / "state.old"
        os.replace(final, old)
        os.replace(tmp, final)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, final)


def load_state(root: Path, model, opt) -> dict:
    from safetensors.torch import load_file

    st = root / "state"
    meta = json.loads((st / "state.json").read_text())
    sd = load_file(str(st / "model.safetensors"), device="cpu")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if m != "output.weight"]:
        raise ValueError(f"resume state does not match the model ({(missing + unexpected)[:3]})")
    tensors = load_file(str(st / "optim.safetensors"), device="cpu")
    state: dict = {}
    for name, t in tensors.items():
        if name.startswith("rng."):
            continue
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


# ---- the loop ----------------------------------------------------------------------------------------
def train(c: TrainConfig, log=print) -> dict:
    device = pick_device(c.device)
    d = setup_dist(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(c.out)
    prep = Prepared.open(c.data)
    if not prep.has_plans("train", c.mode):
        raise ValueError(f"{prep.root} has no {c.mode!r} plans for the train split; run `asa-train prepare --mode {c.mode}`")
    mcfg = model_config(c, prep)
    torch.manual_seed(c.seed)                          # same init for every mode of one seed
    model = Transformer(mcfg).to(device)
    opt = make_optimizer(model, c, device)

    step, tokens, elapsed_before, data_pos = 0, 0, 0.0, {"epoch": 0, "cursor": 0}
    if c.resume and (out / "state" / "state.json").is_file():
        meta = load_state(out, model, opt)
        step, tokens, elapsed_before, data_pos = meta["step"], meta["tokens"], meta["elapsed_s"], meta["data"]
        if d.main:
            log(f"resumed {out} at step {step}")
    elif c.resume and d.main:
        log(f"no resume state in {out}; starting fresh")
    torch.manual_seed(c.seed * 1009 + step + d.rank)   # any later randomness differs per rank, resumes stably

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"train": asdict(c), "model": mcfg.to_dict(),
                                                     "world_size": d.world, "device": str(device)}, indent=1) + "\n")
    fwd = model
    if c.compile:
        fwd = torch.compile(model)
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[d.local_rank] if device.type == "cuda" else None)

    windows = Windows(prep.windows("train"), c.batch_size, c.seed, d, **data_pos)
    loader = Loader(prep, c.mode, windows, device)
    metrics = open(out / "metrics.jsonl", "a") if d.main else None

    def emit(rec: dict):
        if metrics:
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()

    def run_eval(splits, max_windows) -> dict:
        res = {}
        for split in splits:
            if split not in prep.meta["splits"] or not prep.has_plans(split, c.mode):
                continue
            nll, cnt = split_nll(model, prep, split, c.mode, device, c.batch_size, max_windows,
                                 d.rank, d.world, c.amp)
            nll, cnt = all_sum([nll, cnt], d, device)
            res[split] = perplexity(prep, split, nll, int(cnt))
        return res

    n_params = model.num_params()
    if d.main:
        log(f"model {c.preset} mode={c.mode}: {n_params:,} params, ctx {prep.ctx}, "
            f"{prep.windows('train'):,} train windows, device {device} x{d.world}")
    t0 = time.time()
    t_log, tok_log, loss_acc, n_acc = t0, tokens, 0.0, 0
    stopped = "max_steps"
    model.train()
    while step < c.max_steps:
        lr = lr_at(step, c)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, keys, data_pos = loader.get()
        with autocast_for(device, c.amp):
            logits = fwd(x, keys)                                       # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip) if c.grad_clip else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += x.numel() * d.world
        loss_acc = loss_acc + loss.detach()                         # no host sync until the log line
        n_acc += 1
        elapsed = elapsed_before + time.time() - t0

        if step % c.log_every == 0 or step == c.max_steps:
            now = time.time()
            rec = {"kind": "train", "step": step, "tokens": tokens, "loss": float(loss_acc) / n_acc, "lr": lr,
                   "grad_norm": None if gnorm is None else float(gnorm), "elapsed_s": round(elapsed, 2),
                   "tok_s": round((tokens - tok_log) / max(now - t_log, 1e-9), 1)}
            emit(rec)
            if d.main:
                log(f"step {step:6d}  loss {rec['loss']:.4f}  lr {lr:.2e}  {rec['tok_s']:,.0f} tok/s")
            t_log, tok_log, loss_acc, n_acc = now, tokens, 0.0, 0
        over = c.time_budget_s is not None and elapsed >= c.time_budget_s
        if d.world > 1 and c.time_budget_s is not None:
            over = all_sum([float(over)], d, device)[0] > 0      # every rank stops at the same step
        if c.eval_every and (step % c.eval_every == 0 or step == c.max_steps or over):
            res = run_eval(["valid"], c.eval_windows)             # the same windows every time
            for split, r in res.items():
                emit({"kind": "eval", "step": step, "tokens": tokens, "split": split, "elapsed_s": round(elapsed, 2),
                      "loss": r["loss"], "ppl": r["ppl_bpe"], "ppl_word": r.get("ppl_word"),
                      "scored_tokens": r["scored_tokens"]})
                if d.main:
                    log(f"step {step:6d}  {split} loss {r['loss']:.4f}  ppl {r['ppl_bpe']:.2f}")
        if (c.ckpt_every and step % c.ckpt_every == 0) or over:
            if d.main:
                save_state(out, model, opt, {"step": step, "tokens": tokens, "elapsed_s": elapsed, "data": data_pos})
        if over:
            stopped = "time_budget"
            break
    loader.close()
    elapsed = elapsed_before + time.time() - t0

    final = run_eval(list(c.final_eval), None)
    for split, r in final.items():
        emit({"kind": "eval", "step": step, "tokens": tokens, "split": split, "elapsed_s": round(elapsed, 2),
              "loss": r["loss"], "ppl": r["ppl_bpe"], "ppl_word": r.get("ppl_word"), "final": True})
    summary = {"mode": c.mode, "seed": c.seed, "preset": c.preset, "params": n_params, "steps": step,
               "tokens": tokens, "elapsed_s": round(elapsed, 2), "stopped": stopped, "world_size": d.world,
               "device": str(device), "ctx": prep.ctx, "batch_size": c.batch_size, "max_steps": c.max_steps,
               "final": final}
    if d.main:
        if stopped == "max_steps":
            save_state(out, model, opt, {"step": step, "tokens": tokens, "elapsed_s": elapsed, "data": data_pos})
        card = model_card(c, mcfg, summary)
        save_checkpoint(out / "model", model, prep.tokenizer(), card=card,
                        meta={"train": asdict(c), "summary": summary})
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        for split, r in final.items():
            log(f"final {split}: ppl {r['ppl_bpe']:.2f} per BPE token" +
                (f", {r['ppl_word']:.2f} per word" if "ppl_word" in r else ""))
    if metrics:
        metrics.close()
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def model_card(c: TrainConfig, mcfg: ModelConfig, summary: dict) -> str:
    lines = [f"# ASA {c.preset} model, mode `{c.mode}`", "",
             f"Llama-style decoder ({mcfg.n_layer} layers, {mcfg.n_head} heads, d_model {mcfg.d_model}, "
             f"{summary['params']:,} parameters), attention plan mode `{c.mode}` (k={mcfg.plan.k}).",
             f"Trained by `asa-train train` for {summary['steps']} steps ({summary['tokens']:,} tokens, "
             f"ctx {summary['ctx']}, seed {c.seed}) on public-domain English prose (see training/corpus.py).", "",
             "| split | ppl per BPE token | ppl per word |", "|---|---|---|"]
    for split, r in summary["final"].items():
        pw = f"{r['ppl_word']:.2f}" if "ppl_word" in r else "-"
        lines.append(f"| {split} | {r['ppl_bpe']:.2f} | {pw} |")
    return "\n".join(lines) + "\n"

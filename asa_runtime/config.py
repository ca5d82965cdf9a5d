"""Configuration dataclasses shared by the model, the planner, the trainer and the runtime.

`ModelConfig` is the architecture (Llama-style); `PlanConfig` is the ASA mode and selection policy.
Both round-trip through config.json (see asa_runtime/checkpoint.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

MODES = ("full", "pos_only", "features_only", "none", "random", "random_bonds")


@dataclass
class PlanConfig:
    # full | pos_only | features_only | none (dense causal) | random (control: the whole row drawn at random)
    # | random_bonds (control: self, word, sinks and window kept; only the bonded keys drawn at random)
    mode: str = "full"
    k: int = 64                 # max keys per query (row length of the AttentionPlan)
    window: int = 16            # local window: the last `window` tokens (0 = off)
    sinks: int = 4              # the first `sinks` tokens of the sequence (0 = off)
    stride: int = 0             # strided global keys: every `stride`-th earlier token (0 = off)
    lookback_words: int = 96    # how many earlier words the bonding search inspects (bounds cost: O(N*L))
    cross_sentence: bool = True  # pronouns may bond to antecedents in earlier sentences
    seed: int = 0               # for the random controls

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown ASA mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        for name in ("window", "sinks", "stride", "lookback_words"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def dense(self) -> bool:
        return self.mode == "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PlanConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ModelConfig:
    vocab_size: int = 16384
    n_layer: int = 8
    n_head: int = 6
    n_kv_head: int = 6          # < n_head for GQA
    d_model: int = 384
    ffn_hidden: int = 1024      # SwiGLU hidden size
    max_seq_len: int = 2048     # context the model was trained at (RoPE has no hard limit)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    plan: PlanConfig = field(default_factory=PlanConfig)

    def __post_init__(self):
        if isinstance(self.plan, dict):
            self.plan = PlanConfig.from_dict(self.plan)
        if self.d_model % self.n_head:
            raise ValueError("d_model must be divisible by n_head")
        if self.n_head % self.n_kv_head:
            raise ValueError("n_head must be a multiple of n_kv_head")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Size presets. "tiny" is the research's configuration (2 layers, 2 heads, d_model 128).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_kv_head=2, d_model=128, ffn_hidden=512, max_seq_len=256),
    "small": dict(n_layer=8, n_head=6, n_kv_head=6, d_model=384, ffn_hidden=1024, max_seq_len=2048),
    "test": dict(vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=64, ffn_hidden=128, max_seq_len=128),
}

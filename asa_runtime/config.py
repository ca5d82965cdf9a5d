"""Configuration dataclasses shared by the model, the planner, the trainer and the runtime.

`ModelConfig` is the architecture (Llama-style); `PlanConfig` is the ASA mode and selection policy.
Both round-trip through config.json (see asa_runtime/checkpoint.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

MODES = ("full", "pos_only", "features_only", "none", "random", "random_bonds", "local")


@dataclass
class PlanConfig:
    # full | pos_only | features_only | none (dense causal) | random (control: the whole row drawn at random)
    # | random_bonds (control: self, word, sinks and window kept; only the bonded keys drawn at random)
    # | local (control: self, word, sinks and window only; no bonds, no antecedents)
    mode: str = "full"
    k: int = 64                 # max keys per query (row length of the AttentionPlan)
    window: int = 16            # local window: the last `window` tokens (0 = off)
    sinks: int = 4              # the first `sinks` tokens of the sequence (0 = off)
    stride: int = 0             # strided global keys: every `stride`-th earlier token (0 = off)
    lookback_words: int = 96    # how many earlier words the bonding search inspects (bounds cost: O(N*L))
    cross_sentence: bool = True  # pronouns may bond to antecedents in earlier sentences
    seed: int = 0               # for the random controls
    # lexical cohesion: a noun / proper noun may select the tokens of its lemma's `cohesion` most recent earlier
    # mentions anywhere in the document (0 = off; docs/linguistics.md "Lexical cohesion")
    cohesion: int = 0
    # layer-dependent plan (0 = off): every layer not in `wide_layers` attends to a narrow part of each row,
    # its first `sinks` entries (the sink tokens) and its nearest `narrow_k - sinks` (model.narrow_rows);
    # the wide layers get the whole row. The plan and the KV cache are the wide ones.
    narrow_k: int = 0
    wide_layers: tuple = ()

    def __post_init__(self):
        _check_types(self, ("k", "window", "sinks", "stride", "lookback_words", "seed", "cohesion", "narrow_k"), int)
        if isinstance(self.wide_layers, list):
            self.wide_layers = tuple(self.wide_layers)              # from JSON
        if not isinstance(self.wide_layers, tuple) or any(isinstance(i, bool) or not isinstance(i, int)
                                                          for i in self.wide_layers):
            raise ValueError(f"wide_layers must be a list of layer numbers, got {self.wide_layers!r}")
        if not isinstance(self.cross_sentence, bool):
            raise ValueError(f"cross_sentence must be true or false, got {self.cross_sentence!r}")
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ValueError(f"unknown ASA mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        for name in ("window", "sinks", "stride", "lookback_words", "cohesion", "narrow_k"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.narrow_k:
            if self.mode == "none":
                raise ValueError("narrow_k needs a plan: the dense baseline (mode none) has none")
            if not self.sinks < self.narrow_k < self.k:
                raise ValueError(f"narrow_k must lie between sinks ({self.sinks}) and k ({self.k}), got {self.narrow_k}")
            if not self.wide_layers or list(self.wide_layers) != sorted(set(self.wide_layers)) or self.wide_layers[0] < 0:
                raise ValueError(f"wide_layers must be distinct ascending layer numbers, at least one, got "
                                 f"{list(self.wide_layers)}")
        elif self.wide_layers:
            raise ValueError("wide_layers needs narrow_k (the plan width of the other layers)")

    @property
    def dense(self) -> bool:
        return self.mode == "none"

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("cohesion", "narrow_k"):
            if not d[name]:
                del d[name]         # off: the dict (plan caches, prompt-cache hashes, config.json) is as before
        if not self.narrow_k:
            del d["wide_layers"]
        else:
            d["wide_layers"] = list(self.wide_layers)
        return d

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
    # RoPE clamp (0 = off): a planned key more than rope_clamp tokens back is scored as if exactly rope_clamp
    # back (ReRoPE-style), so a plan's far keys (sinks, cohesion mentions) never sit at a relative position the
    # model was not trained on. At rope_clamp >= max_seq_len it changes nothing inside the training length.
    rope_clamp: int = 0

    def __post_init__(self):
        if isinstance(self.plan, dict):
            self.plan = PlanConfig.from_dict(self.plan)
        if not isinstance(self.plan, PlanConfig):
            raise ValueError(f"plan must be an object of plan settings, got {self.plan!r}")
        _check_types(self, ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden", "max_seq_len"),
                     int, minimum=1)
        _check_types(self, ("rope_theta", "norm_eps"), float)
        _check_types(self, ("rope_clamp",), int, minimum=0)    # the dense baseline (mode none) ignores it
        if not (self.rope_theta > 1 and 0 < self.norm_eps < 1):
            raise ValueError(f"rope_theta must be > 1 and norm_eps in (0, 1), got {self.rope_theta}, "
                             f"{self.norm_eps}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        if self.d_model % self.n_head:
            raise ValueError("d_model must be divisible by n_head")
        if self.n_head % self.n_kv_head:
            raise ValueError("n_head must be a multiple of n_kv_head")
        if self.plan.wide_layers and self.plan.wide_layers[-1] >= self.n_layer:
            raise ValueError(f"wide_layers {list(self.plan.wide_layers)}: the model has layers 0..{self.n_layer - 1}")

    def param_count(self) -> int:
        """Parameters this architecture has (weights' memory is checked against it before allocating)."""
        hs = self.head_dim
        per_layer = (self.n_head + 2 * self.n_kv_head) * hs * self.d_model + self.n_head * hs * self.d_model \
            + 3 * self.d_model * self.ffn_hidden + 2 * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return self.vocab_size * self.d_model + self.n_layer * per_layer + self.d_model + head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        d = asdict(self)
        d["plan"] = self.plan.to_dict()
        if not self.rope_clamp:
            del d["rope_clamp"]     # off: config.json and the hashes of existing models are as before
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_types(obj, names, kind, minimum=None) -> None:
    """Config values come from JSON files: refuse wrong types (a bool is not a number) and ranges."""
    for name in names:
        v = getattr(obj, name)
        ok = isinstance(v, (int, float)) if kind is float else isinstance(v, int)
        if isinstance(v, bool) or not ok or (kind is float and v != v):
            raise ValueError(f"{name} must be {'a number' if kind is float else 'an integer'}, got {v!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {v}")


# Size presets. "tiny" is the research's configuration (2 layers, 2 heads, d_model 128).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_kv_head=2, d_model=128, ffn_hidden=512, max_seq_len=256),
    "small": dict(n_layer=8, n_head=6, n_kv_head=6, d_model=384, ffn_hidden=1024, max_seq_len=2048),
    # one size above small (~48M with a 12k vocabulary): wider, same depth, head dim 64 (issue 16's scale point)
    "medium": dict(n_layer=8, n_head=10, n_kv_head=10, d_model=640, ffn_hidden=1728, max_seq_len=2048),
    "test": dict(vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=64, ffn_hidden=128, max_seq_len=128),
}

"""Shared fixtures. `tiny_checkpoint`: a tiny model folder made with the project's own code (a BPE trained
on a few paragraphs, a random-init Transformer of PRESETS["test"] size, save_checkpoint), so tests run
before asa-small exists. `WindowPlanner`: a stand-in planner with a known reachable set (for KV-policy tests
that must not depend on the analyzer's artifacts)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

PARAGRAPHS = [
    "The old lighthouse keeper climbed the stairs every evening. He lit the lamp, wound the clock and "
    "wrote a line in his book about the weather, the ships and the birds that rested on the rail.",
    "When the storm came in October, the village lost its power. Children gathered in the hall, where "
    "their teachers told stories by candlelight until the wind finally dropped after midnight.",
    "Maria bought three apples, a loaf of bread and a small jar of honey. She paid the baker, thanked "
    "him, and walked home along the river while the sun set behind the hills.",
    "Scientists measured the temperature of the lake for twelve years. They found that it warmed faster "
    "in spring than in autumn, and that the fish moved deeper as the surface grew warm.",
    "\"Where are you going?\" asked the girl. The man smiled and pointed at the mountain. \"Up there,\" "
    "he said, \"to see whether the snow has melted.\" She laughed and followed him.",
]
TEST_PLAN = dict(k=16, window=4, sinks=2, lookback_words=12)

# Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine OpenMP's spinning
# workers make every op wait for a busy core (50x slower under load). One thread keeps tests fast.
torch.set_num_threads(1)


def _train_tokenizer():
    from asa_runtime.config import PRESETS
    from asa_runtime.tokenizer import Tokenizer

    return Tokenizer.train(PARAGRAPHS * 4, vocab_size=PRESETS["test"]["vocab_size"], min_frequency=1)


def build_tiny_checkpoint(path, tokenizer, mode: str = "full", seed: int = 0, **plan_kw):
    """Random-init PRESETS['test'] model (vocab adapted to the tokenizer) saved as a model folder."""
    from asa_runtime.checkpoint import save_checkpoint
    from asa_runtime.config import PRESETS, ModelConfig, PlanConfig
    from asa_runtime.model import Transformer

    torch.manual_seed(seed)
    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": tokenizer.vocab_size,
                         "plan": PlanConfig(mode=mode, **{**TEST_PLAN, **plan_kw})})
    model = Transformer(cfg)
    with torch.no_grad():   # larger random weights than the init: sharper logits make greedy tests meaningful
        for p in model.parameters():
            p.mul_(5.0)
    return save_checkpoint(path, model, tokenizer, card="# tiny test model\nRandom weights, for tests only.\n")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _train_tokenizer()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """Path of a tiny sparse (mode "full") model folder."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-full", tiny_tokenizer, mode="full")


@pytest.fixture(scope="session")
def tiny_dense_checkpoint(tmp_path_factory, tiny_tokenizer):
    """Path of a tiny dense (mode "none") model folder."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-dense", tiny_tokenizer, mode="none")


class WindowPlanner:
    """Stand-in planner with the Planner API: row i = sinks + the last `window` tokens + every 5th position
    within `lookback`. Its reachable() is exactly what a future row can select."""

    def __init__(self, k=16, sinks=2, window=4, lookback=30, every=5):
        self.k, self.sinks, self.window, self.lookback, self.every = k, sinks, window, lookback, every

    def row_keys(self, i):
        keys = set(range(min(self.sinks, i + 1))) | set(range(max(0, i - self.window), i + 1))
        keys |= {p for p in range(max(0, i - self.lookback + 1), i) if p % self.every == 0}
        return sorted(keys)

    def plan(self, pieces):
        inc = self.incremental()
        return inc.extend_many(pieces)

    def incremental(self):
        return _WindowInc(self, 0)

    def incremental_from_state(self, state):
        return _WindowInc(self, int(state["meta"]["n"]))


class _WindowInc:
    def __init__(self, p, n):
        self.p, self.n = p, n

    def extend(self, piece):
        row = np.full(self.p.k, -1, dtype=np.int32)
        keys = self.p.row_keys(self.n)
        row[: len(keys)] = keys
        self.n += 1
        return row

    def extend_many(self, pieces):
        return np.stack([self.extend(x) for x in pieces]) if len(pieces) else np.zeros((0, self.p.k), np.int32)

    def reachable(self):
        n, p = self.n, self.p
        keep = set(range(min(p.sinks, n))) | set(range(max(0, n - p.window), n))
        keep |= {q for q in range(max(0, n - p.lookback + 1), n) if q % p.every == 0}
        return np.array(sorted(keep), dtype=np.int64)

    def state_dict(self):
        return {"arrays": {"n": np.array([self.n], dtype=np.int64)}, "meta": {"n": self.n}}


@pytest.fixture
def window_planner():
    return WindowPlanner

"""Which transcript template does asa-small (a base model trained on 19th-century fiction) continue most
sensibly as a chat? For each template in apps/server/conversations.py and a handful of messages, a greedy
reply (repeat penalty 1.1) and a low-temperature one (0.5, seed 0), capped at 48 tokens. Counted: replies
that end by themselves inside the turn (a stop string, not the token cap), their length in words, empty
replies; the replies themselves are written out for reading.

    python bench/serve/chat_templates.py [--out bench/serve/results/chat_templates.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from apps.server.conversations import TEMPLATES  # noqa: E402
from asa_runtime.generate import load, stream_generate  # noqa: E402

MESSAGES = [
    "Good morning. Have you seen my brother today?",
    "What do you think of the weather?",
    "I am afraid the ship will not come back.",
    "Will you walk with me to the village?",
    "Tell me about the house on the hill.",
    "Why did you leave London so suddenly?",
]
SYSTEM = "A quiet garden behind an old house. Two friends talk."
SETTINGS = {"greedy": dict(temp=0, repeat_penalty=1.1), "t0.5": dict(temp=0.5, top_p=0.95, seed=0,
                                                                     repeat_penalty=1.1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/serve/results/chat_templates.md")
    ap.add_argument("--max-tokens", type=int, default=48)
    a = ap.parse_args()
    lm = load("asa-small")
    rows, samples = [], []
    t0 = time.perf_counter()
    for name, tpl in TEMPLATES.items():
        for sname, kw in SETTINGS.items():
            ended, words, empty = 0, [], 0
            for msg in MESSAGES:
                prompt = tpl.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": msg}])
                out, last = [], None
                for r in stream_generate(lm, prompt, a.max_tokens, stop=tpl.stops, **kw):
                    out.append(r.text)
                    last = r
                text = "".join(out).strip()
                ended += last.finish_reason == "stop"
                words.append(len(text.split()))
                empty += not text
                samples.append((name, sname, msg, text, last.finish_reason))
            rows.append((name, sname, ended, len(MESSAGES), sum(words) / len(words), empty))
    lines = [f"# Chat transcript templates on asa-small\n",
             f"Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), "
             f"{time.strftime('%Y-%m-%d')}; {time.perf_counter() - t0:.0f} s. "
             f"Command: `python bench/serve/chat_templates.py`. Max {a.max_tokens} tokens per reply; system "
             f"text: \"{SYSTEM}\".\n",
             "| template | sampling | ended in turn | mean words | empty |", "|---|---|---|---|---|"]
    for name, sname, ended, n, w, empty in rows:
        lines.append(f"| {name} | {sname} | {ended}/{n} | {w:.1f} | {empty} |")
    lines.append("\n## Replies\n")
    for name, sname, msg, text, fin in samples:
        t = text.replace("\n", " / ").replace("|", "\\|")
        lines.append(f"- **{name}** ({sname}, {fin}) *{msg}* -> {t}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, a.out)
    print("\n".join(lines[:4 + len(rows)]))


if __name__ == "__main__":
    main()

"""`asa-run chat` driven through its input: streamed replies equal the library's, /reset forgets, /exit
quits, the history is kept within the context and its cached prefix is reused."""
from click.testing import CliRunner

from asa_runtime.cli import main
from asa_runtime.cli.chat import STOPS, Chat, Conversation
from asa_runtime.generate import generate, load

ARGS = ["-n", "8", "--temp", "0", "--ctx-size", "256"]


def chat(ckpt, text, *extra):
    return CliRunner().invoke(main, ["chat", "-m", str(ckpt), *ARGS, *extra], input=text)


def expected_replies(lm, messages, max_new=8):
    """What the chat should answer, computed with the plain library (no session reuse)."""
    conv, out = Conversation(), []
    for m in messages:
        if m == "/reset":
            conv.turns.clear()
            continue
        reply = generate(lm, conv.render(m), max_new, temp=0, stop=STOPS, ctx_size=256)
        conv.turns.append((m, reply.strip()))
        out.append(reply)
    return out


def test_multi_turn_reset_exit(tiny_dense_checkpoint):
    msgs = ["Hello there", "Tell me about the lighthouse", "/reset", "Hello there"]
    r = chat(tiny_dense_checkpoint, "\n".join(msgs) + "\n/exit\nnever read\n")
    assert r.exit_code == 0, r.output
    want = expected_replies(load(tiny_dense_checkpoint), msgs)
    lines = r.stdout.split("\n")
    assert lines == [want[0], want[1], "[conversation reset]", want[2], ""]
    assert want[2] == want[0]                         # after /reset the history is gone


def test_eof_blank_lines_and_unknown_commands(tiny_dense_checkpoint):
    r = chat(tiny_dense_checkpoint, "\n\n/what\n/help\n")          # ends at EOF without /exit
    assert r.exit_code == 0
    assert "unknown command /what" in r.stdout and "/reset" in r.stdout


def test_long_message_is_an_error_line_not_a_crash(tiny_dense_checkpoint):
    long = "word " * 400
    r = chat(tiny_dense_checkpoint, f"{long}\nHello there\n")
    assert r.exit_code == 0
    lines = r.stdout.split("\n")
    assert lines[0].startswith("[error: message too long")
    assert lines[1] == expected_replies(load(tiny_dense_checkpoint), ["Hello there"])[0]


def test_bad_flags_one_line(tiny_dense_checkpoint):
    r = CliRunner().invoke(main, ["chat", "-m", str(tiny_dense_checkpoint), "--top-p", "2"], input="hi\n")
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and "--top-p" in r.output
    r = CliRunner().invoke(main, ["chat", "-m", "nope"], input="hi\n")
    assert r.exit_code != 0 and r.output.startswith("Error: unknown model")


def test_history_truncated_to_context_and_prefix_reused(tiny_dense_checkpoint):
    lm = load(tiny_dense_checkpoint)
    c = Chat(lm, max_tokens=8, ctx_size=96, temp=0)
    msgs = [f"Message number {i} about the storm in October" for i in range(8)]
    cached = []
    for m in msgs:
        "".join(c.reply(m))
        cached.append(c.last.cached_tokens)
        assert c.last.prompt_tokens <= 96 - 8                       # prompt + reply fit the context
    assert len(c.conv.turns) < len(msgs)                            # oldest turns were dropped
    assert c.conv.turns[-1][0] == msgs[-1]
    assert cached[1] > 0                                            # turn 2 reused turn 1's prompt from the cache


def test_undecodable_line_is_skipped_not_fatal(tiny_dense_checkpoint):
    good = "Hello there"
    data = b"\xff\xfe broken \x80\n" + good.encode() + b"\n/exit\n"
    r = CliRunner().invoke(main, ["chat", "-m", str(tiny_dense_checkpoint), *ARGS], input=data)
    assert r.exit_code == 0, r.output
    lines = r.stdout.split("\n")
    assert lines[0].startswith("[skipped a line that is not UTF-8 text")
    assert lines[1] == expected_replies(load(tiny_dense_checkpoint), [good])[0]


def test_a_reply_stopped_early_keeps_the_conversation(tiny_dense_checkpoint):
    """What Ctrl-C does in the terminal chat (close the reply generator): the partial turn stays and the
    next turn continues the same conversation."""
    lm = load(tiny_dense_checkpoint)
    c = Chat(lm, max_tokens=8, ctx_size=256, temp=0)
    gen = c.reply("Hello there")
    first = next(gen)
    gen.close()
    assert c.conv.turns == [("Hello there", first.strip())]
    assert "".join(c.reply("And then?"))              # the conversation goes on
    assert len(c.conv.turns) == 2

"""The generation measurement: the loop's teacher forcing, interleaved rounds and their statistics,
parity against eager generate(), the budget's pick, and the options checked before any work."""

from __future__ import annotations

import pytest
import torch
from tiny_decoders import captured_decoder, prompts

from fxbench.errors import BenchOptionError
from fxbench.runtime import Backend
from fxbench.runtime.generation import (
    GenerationSettings,
    GenerationSubject,
    TorchStep,
    _parity,
    best_generation,
    capture_steps,
    check_generation_labels,
    greedy_generate,
    measure_generation,
)


def test_teacher_forcing_feeds_the_given_tokens_and_records_the_argmax():
    cap = captured_decoder("llama")
    step = capture_steps(cap)["program"]
    ids, mask = prompts()
    free = greedy_generate(step, ids, mask, max_new_tokens=6, keep_logits=True)
    # Forced with its own tokens: the same calls, the same argmax, the same logits.
    forced = greedy_generate(step, ids, mask, max_new_tokens=6, keep_logits=True, forced=free.new_tokens)
    assert torch.equal(forced.tokens, free.tokens)
    assert all(torch.allclose(a, b) for a, b in zip(forced.logits, free.logits))
    # Forced with other tokens: the first call (the prompt alone) agrees, later contexts differ.
    other = (free.new_tokens + 1) % 512
    off = greedy_generate(step, ids, mask, max_new_tokens=6, keep_logits=True, forced=other)
    assert torch.equal(off.new_tokens[:, 0], free.new_tokens[:, 0]) and not torch.allclose(off.logits[1], free.logits[1])
    assert len(free.logits) == 6 and free.logits[0].shape == (2, 512)


def test_measure_generation_interleaves_rounds_and_checks_every_backend_against_generate():
    cap = captured_decoder("llama")
    settings = GenerationSettings(batches=(1, 2), prompt_lengths=(6,), new_tokens=5, rounds=2, warmup=1)
    seen: list[tuple[str, str]] = []
    partials = []
    result = measure_generation(GenerationSubject.from_capture(cap), ["generate", Backend("eager"), Backend("program", precision="int4")],
                                settings, model={"name": "tiny"}, events=lambda s, st, d: seen.append((s, st)), on_round=partials.append)
    assert [r.label for r in result.backends] == ["generate", "eager", "program"] and all(r.status == "ok" for r in result.backends)
    assert [s.label for s in result.shapes] == ["b1 p6", "b2 p6"]
    for shape in result.shapes:
        for label in ("generate", "eager", "program"):
            m = result.measurement(label, shape)
            assert m is not None and m.status == "ok", (label, m)
            # One time to first token per round; every later call of every round per output token.
            assert m.ttft.count == 2 and m.tpot.count == 2 * 4
            assert m.first_generation_s > 0 and m.tokens_per_s > 0 and m.decode_tokens_per_s == pytest.approx(shape.batch * 1e3 / m.tpot.median_ms)
            assert m.parity.tokens_equal and m.parity.position_agreement == 1.0 and m.parity.passed
            assert m.parity.logits_cosine > 0.99999
        # The loop's backends are checked teacher forced; generate() itself by position.
        assert result.measurement("eager", shape).parity.forced_agreement == 1.0
        assert result.measurement("generate", shape).parity.forced_agreement is None
        assert result.speedup("generate", shape) == 1.0
    assert result.measurement("program", result.shapes[0]).parity.precision == "int4"
    data = result.to_dict()
    assert data["speedups"]["eager"]["b1 p6"] > 0 and data["settings"]["rounds"] == 2
    assert ("eager b2 p6", "done") in seen
    # Progress per round, and after each round the result so far: what a stopped run leaves.
    assert [s for s, st in seen if s.startswith("round ")] == ["round 1/2 b1 p6", "round 2/2 b1 p6", "round 1/2 b2 p6", "round 2/2 b2 p6"]
    assert [p.settings.get("partial") for p in partials] == [
        {"shape": "b1 p6", "rounds_done": 1, "rounds": 2}, {"shape": "b1 p6", "rounds_done": 2, "rounds": 2},
        {"shape": "b2 p6", "rounds_done": 1, "rounds": 2}, None]
    first = partials[0].measurement("eager", result.shapes[0])
    assert first.status == "ok" and first.ttft.count == 1 and first.tpot.count == 4
    assert partials[0].measurement("eager", result.shapes[1]) is None
    assert partials[-1].to_dict()["measurements"] == data["measurements"] and "partial" not in data["settings"]

    # The budget's pick: among the named backends, the fastest whose parity holds.
    best = best_generation(result, among=["eager", "program"])
    assert best is not None and best.backend in ("eager", "program") and best.worst_agreement == 1.0
    assert best_generation(result, min_cosine=1.1, among=["eager", "program"]) is None


def test_a_step_that_changes_the_logits_fails_fp32_parity():
    """A backend whose greedy tokens differ from generate()'s is a parity failure at fp32."""
    cap = captured_decoder("llama")

    class Shifted(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            logits, *presents = self.inner(**kw)
            return (logits.roll(1, dims=-1), *presents)

    subject = GenerationSubject(cap.loaded, cap.eager, cap.exported)
    step = TorchStep(Shifted(cap.eager), cap.layout, cap.eager.token_names)
    ids, mask = prompts(left_padded=False)
    ref = greedy_generate(capture_steps(cap)["eager"], ids, mask, max_new_tokens=4, keep_logits=True)
    free = greedy_generate(step, ids, mask, max_new_tokens=4, keep_logits=True)
    assert not torch.equal(free.tokens, ref.tokens)
    forced = greedy_generate(step, ids, mask, max_new_tokens=4, keep_logits=True, forced=ref.new_tokens)
    parity = _parity("fp32", free, forced, ref)
    assert not parity.passed and "greedy tokens differ" in parity.reason and "logits cosine" in parity.reason
    assert parity.forced_agreement < 1.0
    # The same shifted logits at int4: no token rule, but the cosine budget still fails them.
    assert not _parity("int4", free, forced, ref).passed
    # The unshifted step passes at fp32.
    same = greedy_generate(capture_steps(cap)["program"], ids, mask, max_new_tokens=4, keep_logits=True)
    same_forced = greedy_generate(capture_steps(cap)["program"], ids, mask, max_new_tokens=4, keep_logits=True, forced=ref.new_tokens)
    assert _parity("fp32", same, same_forced, ref).passed
    assert subject.vocab_size == 512


def test_generation_options_and_backends_are_checked_first():
    with pytest.raises(BenchOptionError, match="--new-tokens must be at least 2"):
        GenerationSettings(new_tokens=1)
    with pytest.raises(BenchOptionError, match="--prompt-len"):
        GenerationSettings(prompt_lengths=(0,))
    with pytest.raises(BenchOptionError, match="backend 'compile' has no generation loop"):
        check_generation_labels(["generate", Backend("compile")])
    with pytest.raises(BenchOptionError, match="listed twice: eager"):
        check_generation_labels([Backend("eager"), Backend("eager")])
    with pytest.raises(BenchOptionError, match="unknown generation baseline"):
        check_generation_labels(["generate-fast"])

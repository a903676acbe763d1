"""With-past capture of causal LMs: cache layout from the config, program I/O and axes, numerics against the model's own cache, greedy parity."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_decoders import DECODERS, UNSUPPORTED, captured_decoder, prompts, tiny_decoder

from fxbench.errors import CaptureError
from fxbench.models import LoadedModel
from fxbench.models.decoder import cache_layout, capture_with_past, eager_with_cache, load_for_generation, onnx_name
from fxbench.runtime.generation import capture_steps, greedy_generate, stop_tokens

FAMILIES = list(DECODERS)
# (kv heads, head dim, layer kinds) the tiny configs imply.
EXPECTED_LAYOUT = {
    "gpt2": (4, 16, {"full_attention"}),
    "llama": (2, 16, {"full_attention"}),
    "qwen2": (2, 16, {"full_attention"}),
    "mistral": (2, 16, {"sliding_attention"}),
    "phi3": (2, 16, {"full_attention"}),
    "gpt_neox": (4, 16, {"full_attention"}),
    "opt": (4, 16, {"full_attention"}),
    "gemma2": (2, 16, {"full_attention", "sliding_attention"}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_layout_comes_from_the_config(family):
    loaded = tiny_decoder(family)
    layout = cache_layout(loaded.model, loaded.config)
    heads, head_dim, kinds = EXPECTED_LAYOUT[family]
    assert layout.num_layers == 2
    assert layout.kv_heads == (heads, heads) and layout.head_dims == (head_dim, head_dim)
    assert set(layout.layer_types) == kinds
    assert layout.past_names() == ("past_key_values_0_key", "past_key_values_0_value", "past_key_values_1_key", "past_key_values_1_value")
    assert [onnx_name(n) for n in layout.present_names()] == ["present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert (layout.sliding_window is not None) == ("sliding_attention" in kinds)


def _close(got: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> None:
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    for g, r in zip(got[1:], ref[1:], strict=True):
        # The model's own sliding-window layers crop their cache to the window; the program keeps
        # the whole past, whose last entries are the model's.
        torch.testing.assert_close(g[..., -r.shape[-2]:, :], r, rtol=1e-5, atol=1e-5)


# (batch, new tokens, past tokens), none of them the sample's (2, 5, 3): a prefill with no past, a
# decode step, a decode from an empty past, a past of one, and a chunk after a long past.
STEPS = {"prefill": (1, 11, 0), "decode": (3, 1, 9), "decode_empty_past": (2, 1, 0), "decode_past1": (1, 1, 1), "chunk": (2, 4, 13)}


# One test per family, so that each test process captures a family once (export is the slow part).
@pytest.mark.parametrize("family", FAMILIES)
def test_with_past_program_structure_numerics_and_greedy_parity(family):
    cap = captured_decoder(family)

    # Structure: the inputs and outputs, in order, and their dynamic axes.
    past = cap.layout.past_names()
    assert cap.input_names == ("input_ids", "attention_mask", "position_ids", *past)
    assert cap.output_names == ("logits", *cap.layout.present_names())
    placeholders = [n.name for n in cap.exported.graph.nodes if n.op == "placeholder" and n.name in cap.input_names]
    assert tuple(placeholders) == cap.input_names
    axes = {name: {axis: dim.__name__ for axis, dim in spec.items()} for name, spec in cap.dynamic_shapes.items()}
    assert axes["input_ids"] == {0: "batch", 1: "seq"} and axes["attention_mask"] == {0: "batch", 1: "total_seq"}
    assert all(axes[n] == {0: "batch", 2: "past_seq"} for n in past)
    # Past 0 (prefill) and seq 1 (decode) are in range, though the sample had neither.
    ranges = {str(sym): int(r.lower) for sym, r in cap.exported.range_constraints.items()}
    nodes = {n.name: n for n in cap.exported.graph.nodes}
    assert ranges[str(nodes[past[0]].meta["val"].shape[2])] == 0
    assert ranges[str(nodes["input_ids"].meta["val"].shape[1])] == 1
    assert "aten.cat.default" in {str(n.target) for n in nodes.values() if n.op == "call_function"}

    # Numerics: logits and presents against the eager model given a DynamicCache of the same past.
    program = cap.graph_module()
    for name, (batch, seq, length) in STEPS.items():
        inputs = cap.step_inputs(batch, seq, length, seed=7)
        with torch.no_grad():
            got = tuple(program(**inputs))
        assert got[0].shape == (batch, seq, 512), name
        assert all(t.shape[2] == length + seq for t in got[1:]), name
        _close(got, eager_with_cache(cap.loaded.model, cap.layout, inputs))

    # Greedy parity: 16 tokens of a left-padded batch, through the eager wrapper and the program,
    # equal eager generate() with the model's own DynamicCache.
    ids, mask = prompts()
    with torch.no_grad():
        expected = cap.loaded.model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, use_cache=True)
    assert expected.shape == (2, 6 + 16)
    eos, pad = stop_tokens(cap.loaded.model.generation_config)
    for backend, step in capture_steps(cap).items():
        out = greedy_generate(step, ids, mask, max_new_tokens=16, eos_token_ids=eos, pad_token_id=pad)
        assert torch.equal(out.tokens, expected), backend
        assert len(out.step_seconds) == 16 and out.time_to_first_token > 0


def test_sliding_window_logits_hold_past_the_window():
    """Mistral with a window of 8, 13 cached tokens: the program keeps all 17 while the model's
    cache keeps 7, and the logits agree (the sliding mask comes from the config)."""
    cap = captured_decoder("mistral")
    inputs = cap.step_inputs(2, 4, 13, seed=3)
    with torch.no_grad():
        got = tuple(cap.graph_module()(**inputs))
    ref = eager_with_cache(cap.loaded.model, cap.layout, inputs)
    assert got[1].shape[2] == 17 and ref[1].shape[2] == cap.layout.sliding_window - 1
    _close(got, ref)


@pytest.mark.parametrize("family", list(UNSUPPORTED))
def test_recurrent_caches_fail_in_one_line_naming_the_model_type(family):
    with pytest.raises(CaptureError) as info:
        capture_with_past(tiny_decoder(family))
    message = str(info.value)
    assert "\n" not in message
    assert repr(family) in message and "recurrent" in message and "--task text-generation" in message


def test_encoder_decoders_are_refused_in_one_line():
    config = transformers.T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=100)
    model = transformers.T5ForConditionalGeneration(config).eval()
    loaded = LoadedModel(source="tiny-t5", task="text2text-generation", config=config, model=model, modality="text")
    with pytest.raises(CaptureError, match=r"^model type 't5' is an encoder-decoder.*--task text2text-generation"):
        capture_with_past(loaded)


def test_a_sample_of_size_0_or_1_is_refused():
    with pytest.raises(CaptureError, match="at least 2"):
        capture_with_past(tiny_decoder("llama"), past=1)


def test_load_for_generation_reads_a_folder_and_refuses_a_recurrent_one(tiny_dir, tmp_path):
    loaded = load_for_generation(str(tiny_dir("gpt2")))
    assert loaded.task == "text-generation-with-past"
    assert cache_layout(loaded.model, loaded.config).num_layers == 4
    folder = tmp_path / "mamba"
    tiny_decoder("mamba").model.save_pretrained(folder)
    with pytest.raises(CaptureError, match="^model type 'mamba' keeps recurrent layer states"):
        load_for_generation(str(folder))

"""Capture with torch.export: every family and the real MiniLM match eager, at the sample shape and another."""

from __future__ import annotations

import pytest
import torch
from conftest import ALL_FAMILIES

from fxbench.errors import CaptureError
from fxbench.models import LoadedModel, capture, run_module
from fxbench.numerics import Tolerance, compare

EXPECTED_OUTPUTS = {
    "bert": ("last_hidden_state", "pooler_output"),
    "gpt2": ("logits",),
    "llama": ("logits",),
    "vit": ("logits",),
    "resnet": ("logits",),
    "whisper": ("logits", "encoder_last_hidden_state"),
    "minilm": ("last_hidden_state", "pooler_output"),
}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_capture_matches_eager_at_two_shapes(captured, family):
    cp = captured(family)
    assert cp.output_names == EXPECTED_OUTPUTS[family]
    gm = cp.graph_module()
    # The graph takes the model's own input names and returns a flat tuple.
    placeholders = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    assert placeholders == list(cp.input_names)
    fp32 = Tolerance.for_precision("fp32")
    parity = compare(run_module(gm, cp.inputs.tensors), cp.reference, cp.output_names)
    assert fp32.accepts(parity), parity.brief()
    # A shape the capture never saw: dynamic batch and sequence, proven rather than assumed.
    other = cp.make_inputs(batch=3, seq=12 if cp.inputs.seq else None, seed=1)
    assert other.batch == 3
    parity = compare(run_module(gm, other.tensors), cp.run_eager(other.tensors), cp.output_names)
    assert fp32.accepts(parity), parity.brief()


def test_captured_graph_keeps_module_paths(captured):
    from fxbench.passes.base import module_path

    gm = captured("bert").graph_module()
    paths = {module_path(n) for n in gm.graph.nodes if n.op == "call_function"}
    assert {"encoder.layer.3.attention.self", "encoder.layer.3.output.dense", "embeddings.word_embeddings"} <= paths
    assert not any(p.startswith(("model.", "_empty")) for p in paths)


class _BranchOnValues(torch.nn.Module):
    """A model whose Python control flow reads a tensor's value: export cannot trace through it."""

    main_input_name = "input_ids"

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        n = int(attention_mask.sum())  # the line that breaks
        return {"hidden": h[:, :n]}


def test_capture_failure_names_the_model_line():
    from transformers import BertConfig

    config = BertConfig(vocab_size=50)
    loaded = LoadedModel(source="branchy", task="feature-extraction", config=config, model=_BranchOnValues().eval(), modality="text")
    with pytest.raises(CaptureError) as info:
        capture(loaded, batch=2, seq=8)
    message = str(info.value)
    assert "\n" not in message
    assert "test_capture.py" in message and "int(attention_mask.sum())" in message
    assert "try --static" in message or "another --task" in message


def test_eager_failure_on_sample_inputs_is_reported():
    class Broken(_BranchOnValues):
        def forward(self, input_ids, attention_mask=None):
            raise ValueError("this model wants pixel values")

    from transformers import BertConfig

    loaded = LoadedModel(source="broken", task="feature-extraction", config=BertConfig(vocab_size=50), model=Broken().eval(), modality="text")
    with pytest.raises(CaptureError, match="failed in eager PyTorch.*wants pixel values"):
        capture(loaded)


def test_a_constraint_violation_names_the_range_flags_that_fix_it():
    from fxbench.models.capture import capture_error

    # torch.export's own message (torch/fx/experimental/symbolic_shapes.py), as GPT-Neo's local attention raises it.
    msg = ("Constraints violated (seq)! For more information, run with TORCH_LOGS=\"+dynamic\".\n"
           "  - Not all values of seq = L['input_ids'].size()[1] in the specified range seq <= 128 satisfy the generated guard "
           "8 >= L['input_ids'].size()[1].\nSuggested fixes:\n  seq = Dim('seq', max=8)")
    line = str(capture_error(RuntimeError(msg), False, "gpt_neo (GPTNeoForCausalLM)"))
    assert line == ("capture of gpt_neo (GPTNeoForCausalLM) failed: RuntimeError: Constraints violated (seq)!; a dynamic dimension "
                    "cannot span its range: torch.export needs seq = Dim('seq', max=8): try --seq-range 2:8, or --static")
    # torch.export's advice that follows the fixes after a blank line is not a fix (Cohere2 with a 16-token window).
    advice = ("\n\nThe error above occurred when calling torch.export.export. If you would like to view some more information "
              "about this error, and get a list of all other errors that may occur in your export call, you can replace your "
              "`export()` call with `draft_export()`.")
    assert str(capture_error(RuntimeError(msg + advice), False, "x")).endswith(
        "torch.export needs seq = Dim('seq', max=8): try --seq-range 2:8, or --static")
    pinned = str(capture_error(RuntimeError("Constraints violated (seq)!\nSuggested fixes:\n  seq = 16"), False, "x"))
    assert pinned.endswith("torch.export needs seq = 16: try --static --seq 16")
    # GPT-Neo (tiny, 128 positions): no suggested fix, a guard that leaves out the top of the range.
    msg = ("Constraints violated (seq)! For more information, run with TORCH_LOGS=\"+dynamic\".\n"
           "  - Not all values of seq = L['input_ids'].size()[1] in the specified range seq <= 128 satisfy the generated guard "
           "L['input_ids'].size()[1] != 128.")
    assert str(capture_error(RuntimeError(msg), False, "x")).endswith("torch.export needs seq != 128: try --seq-range 2:127, or --static")

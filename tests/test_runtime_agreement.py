"""The task's own agreement figures on constructed cases where the answer is known."""

from __future__ import annotations

import pytest
import torch

from fxbench.runtime.agreement import mean_pooled_cosine, task_agreement


def test_top1_counts_samples_whose_argmax_class_matches():
    ref = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 5.0]])
    got = ref.clone()
    got[1] = torch.tensor([4.0, 3.0, 1.0])  # flips sample 1's class
    got[3] *= 10  # same class, very different logits: still agrees
    a = task_agreement("text-classification", ("logits",), (got,), (ref,), {})
    assert a is not None and a.metric == "top-1" and a.value == pytest.approx(0.75)


def test_next_token_argmax_reads_each_rows_last_real_position():
    vocab = 5
    ref = torch.zeros(2, 4, vocab)
    ref[0, 2, 1] = 1.0  # row 0: three real tokens, then padding
    ref[1, 3, 4] = 1.0  # row 1: four real tokens
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    got = ref.clone()
    got[0, 3, 0] = 9.0  # differs only at row 0's padding
    got[:, 0, 2] = 9.0  # and at the first position: neither is a next token
    inputs = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": mask}
    a = task_agreement("text-generation", ("logits",), (got,), (ref,), inputs)
    assert a is not None and a.metric == "next-token argmax" and a.value == 1.0
    got[1, 3, 2] = 9.0  # row 1's next token changes
    assert task_agreement("text-generation", ("logits",), (got,), (ref,), inputs).value == pytest.approx(0.5)


def test_embedding_cosine_mean_pools_over_real_tokens_only():
    ref = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = ref.clone()
    got[0, 2] = torch.tensor([-50.0, 7.0])  # a padded token: not part of the sentence embedding
    a = task_agreement("feature-extraction", ("last_hidden_state", "pooler_output"), (got, torch.zeros(2, 2)), (ref, torch.zeros(2, 2)),
                       {"attention_mask": mask})
    assert a is not None and a.metric == "embedding cosine" and a.value == pytest.approx(1.0)
    got[1] = torch.tensor([[1.0, 0.0]] * 3)  # row 1's embedding turns 90 degrees: cosine 0
    assert mean_pooled_cosine(got, ref, mask) == pytest.approx(0.5)
    assert mean_pooled_cosine(got, ref, None) < 0.5  # without the mask the padded token counts, and hurts


def test_token_argmax_ignores_padding_and_span_argmax_needs_both_ends():
    ref = torch.eye(3).repeat(1, 1, 1)  # one row, three tokens, three labels
    got = ref.clone()
    got[0, 2] = torch.tensor([0.0, 5.0, 0.0])  # the padded third token changes label
    mask = torch.tensor([[1, 1, 0]])
    a = task_agreement("token-classification", ("logits",), (got,), (ref,), {"attention_mask": mask})
    assert a is not None and a.metric == "token argmax" and a.value == 1.0
    start, end = torch.tensor([[0.0, 2.0], [3.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    qa = task_agreement("question-answering", ("start_logits", "end_logits"), (start, end.flip(-1)), (start, end), {})
    assert qa is not None and qa.metric == "span argmax" and qa.value == 0.0  # starts agree, ends do not

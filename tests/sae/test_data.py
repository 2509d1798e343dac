"""Texts, chat templates, token labels, packing and LM activation reads on the tiny LM."""

import json
from itertools import islice

import pytest
import torch
from transformers import AutoTokenizer

from sae.errors import DataError, ModelLoadError
from sae.lm import load_lm, residual_after
from sae.packing import Cursor, iter_contexts, valid_mask
from sae.pii import PII_TYPES
from sae.texts import iter_documents, render


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    return AutoTokenizer.from_pretrained(tiny_lm)


def test_conversations_go_through_the_chat_template(tokenizer):
    text = render(
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}], tokenizer
    )
    assert text == "<s><|user|>\nhello</s>\n<|assistant|>\nhi</s>\n"
    assert render("plain text", tokenizer) == "plain text"
    with pytest.raises(DataError, match="text_field"):
        render({"a": 1}, tokenizer)


def test_pii_tokens_are_labelled(make_config, tokenizer, tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "write to ann.lee@example.com today"}, {"text": "nothing to see"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    docs = list(iter_documents(make_config(dataset=str(path)), tokenizer))
    email = PII_TYPES.index("email") + 1
    labelled = [
        tokenizer.decode(i)
        for i, lab in zip(docs[0].ids, docs[0].labels, strict=True)
        if lab == email
    ]
    assert "".join(labelled).strip() == "ann.lee@example.com"
    assert not any(docs[1].labels)
    assert docs[0].ids[-1] == tokenizer.eos_token_id


def test_pii_only_keeps_flagged_rows_and_counts_all(make_config, tokenizer, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": t}) for t in ["no pii", "call 555-123-4567", "none"])
    )
    docs = list(iter_documents(make_config(dataset=str(path), pii_only=True), tokenizer))
    assert [d.row for d in docs] == [1]


def test_parquet_and_text_field_errors(make_config, tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"body": ["one text", "another text"]}), path)
    docs = list(iter_documents(make_config(dataset=str(path), text_field="body"), tokenizer))
    assert len(docs) == 2
    with pytest.raises(DataError, match="no text column"):
        list(iter_documents(make_config(dataset=str(path)), tokenizer))
    with pytest.raises(DataError, match=r"\.json, \.jsonl or \.parquet"):
        bad = tmp_path / "rows.csv"
        bad.write_text("x")
        list(iter_documents(make_config(dataset=str(bad)), tokenizer))


def test_packing_restarts_exactly_at_any_cursor(make_config, tokenizer):
    config = make_config()
    contexts = list(islice(iter_contexts(config, tokenizer, Cursor(), None), 30))
    assert all(len(c.ids) == 64 and c.ids[0] == tokenizer.bos_token_id for c in contexts)
    resumed = list(islice(iter_contexts(config, tokenizer, contexts[11].after, None), 18))
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(contexts[12:], resumed, strict=True))
    mask = valid_mask(contexts[0].ids, tokenizer)
    assert not mask[0] and not mask[contexts[0].ids == tokenizer.bos_token_id].any()


def test_activations_stop_after_the_layer_and_match_the_full_forward(make_config):
    config = make_config()
    lm = load_lm(config.model, device=torch.device("cpu"), lm_dtype="auto", token_env="HF_TOKEN")
    ids = next(iter_contexts(config, lm.tokenizer, Cursor(), None)).ids.unsqueeze(0)
    later_ran = []
    handle = lm.layers[3].register_forward_hook(lambda *_: later_ran.append(True))
    try:
        hidden = residual_after(lm, 2, ids)
    finally:
        handle.remove()
    assert not later_ran
    full = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[3]
    assert torch.allclose(hidden, full, atol=1e-5)


def test_gated_model_message_names_the_token_variable(monkeypatch):
    import sae.lm

    def gated(*_args, **_kwargs):
        raise OSError("You are trying to access a gated repo. Make sure to have access to it.")

    monkeypatch.setattr(sae.lm.AutoTokenizer, "from_pretrained", gated)
    monkeypatch.delenv("MY_HF_TOKEN", raising=False)
    with pytest.raises(ModelLoadError, match=r"gated.*MY_HF_TOKEN is not set.*MY_HF_TOKEN"):
        sae.lm._load("org/gated-model", torch.device("cpu"), torch.float32, "MY_HF_TOKEN")

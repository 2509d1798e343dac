"""`python -m sae make-tiny-lm DIR`: a tiny Llama-architecture causal LM and its tokenizer, made
and briefly trained locally on the synthetic chat corpus, saved like any hub model (so the real
`from_pretrained` path loads it). Deterministic for a given seed; takes a few seconds on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sae.corpus import iter_corpus

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


def make_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with BOS/EOS/PAD and a chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
    )


def make_tiny_lm(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    n_layers: int = 4,
    vocab_size: int = 1024,
    train_steps: int = 60,
) -> Path:
    """Create, train briefly and save the tiny LM + tokenizer into `out_dir`."""
    out_dir = Path(out_dir)
    conversations = [row["conversation"] for row in iter_corpus(1500, seed + 1)]
    plain = [message["content"] for conv in conversations for message in conv]
    tokenizer = make_tokenizer(plain, vocab_size)
    rendered = [str(tokenizer.apply_chat_template(conv, tokenize=False)) for conv in conversations]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        _train(model, tokenizer, rendered, train_steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    steps: int,
    context_len: int = 64,
    batch_size: int = 16,
) -> None:
    """A few hundred AdamW steps of next-token prediction on packed contexts."""
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    n_contexts = len(ids) // context_len
    data = torch.tensor(ids[: n_contexts * context_len]).view(n_contexts, context_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    order = torch.randperm(n_contexts)
    model.train()
    for step in range(steps):
        rows = order[(torch.arange(batch_size) + step * batch_size) % n_contexts]
        batch = data[rows]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()

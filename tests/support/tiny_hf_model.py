"""Writes a tiny randomly initialised Llama checkpoint, as `save_pretrained` does, for the
convert test: a SentencePiece tokenizer trained here on a few sentences (no hub), 2 layers,
hidden size 256. Prints, as JSON, the prompt's token ids and the greedy continuation that
transformers computes, so the test can check the converted GGUF against the original.

Run with a Python that has the convert extra: `python tiny_hf_model.py OUT_DIR PROMPT N`.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

SENTENCES = [
    "Once upon a time there was a small herd of llamas on a hill.",
    "The llamas served tokens to every board on the shelf.",
    "A worker loads a model and generates text for the gateway.",
    "Quantized weights make small boards fast enough to answer.",
]


def main(out: Path, prompt: str, n_tokens: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20), model_writer=model_file, vocab_size=60,
        model_type="unigram", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2,
    )  # fmt: skip
    (out / "tokenizer.model").write_bytes(model_file.getvalue())
    # legacy=True loads the SentencePiece model as is (the non-legacy path needs protobuf).
    tokenizer = LlamaTokenizer(vocab_file=str(out / "tokenizer.model"), legacy=True)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, torch_dtype="float32",
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    # Random weights give flat logits; larger ones make greedy choices clear-cut, so F16
    # rounding in the GGUF does not flip them.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    model.save_pretrained(out)
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        generated = model.generate(
            torch.tensor([ids]), max_new_tokens=n_tokens, do_sample=False, min_new_tokens=n_tokens,
        )  # fmt: skip
    print(json.dumps({"prompt_ids": ids, "greedy_ids": generated[0][len(ids) :].tolist()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))

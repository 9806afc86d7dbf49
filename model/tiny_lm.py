"""A tiny stand-in for the base model, for fast tests of training, export and serving.

:func:`build_tiny_model` writes a directory that loads wherever a base-model path is accepted
(``AutoTokenizer`` / ``AutoModelForCausalLM``): a byte-level BPE tokenizer with a 512-token
vocabulary trained on generated prompts and explanations (:func:`training_texts`, from the
synthetic features of :mod:`model.tiny`), SmolLM2's ChatML template and special tokens, and a
randomly initialised two-layer Llama. It takes a second or two, so tests of training, export
and serving can run end to end without the 135M-parameter model. torch, tokenizers and
transformers are imported only when it is built.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from model.base import IM_END
from model.explain import verbalize
from model.prompts import chat_messages
from model.tiny import synthetic_features

#: Special tokens shared with SmolLM2 (ChatML), so code written against one works with both.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)


def training_texts(count: int, seed: int = 0) -> list[str]:
    """ChatML conversations (system, prompt, verbalized explanation) for tokenizer training.

    >>> texts = training_texts(3)
    >>> len(texts), texts[0].startswith("<|im_start|>system")
    (3, True)
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    texts = []
    for i in range(count):
        features = synthetic_features(rng)
        predicted = math.log1p(features.count * rng.uniform(0.5, 2.0))
        explanation = verbalize(features, predicted, variant=i)
        turns = chat_messages(features, explanation)
        texts.append("".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns))
    return texts


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random Llama and a trained 512-token tokenizer to ``out_dir``.

    Parameters
    ----------
    out_dir
        Directory to create (or overwrite files in).
    seed
        Seeds both the training texts and the weights: equal seeds give equal models.

    Returns
    -------
    Path
        ``out_dir``, loadable with ``AutoTokenizer.from_pretrained`` and
        ``AutoModelForCausalLM.from_pretrained`` like the cached SmolLM2 directory:
        ChatML template, EOS = PAD = ``<|im_end|>``, no BOS prepended, tied embeddings.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from model.base import SMOLLM2_CHAT_TEMPLATE

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    backend = Tokenizer(models.BPE())
    # Digits one by one, like SmolLM2: numbers are the signal and must tokenize uniformly.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(training_texts(300, seed), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=IM_END,
        unk_token=ENDOFTEXT,
        model_max_length=256,
        chat_template=SMOLLM2_CHAT_TEMPLATE,
        # Like Llama tokenizers: no token_type_ids, which a causal LM's generate() rejects.
        model_input_names=["input_ids", "attention_mask"],
    )
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    bos_id = tokenizer.convert_tokens_to_ids(IM_START)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=im_end_id,
        pad_token_id=im_end_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    generation = model.generation_config
    if generation is not None:  # always set for a causal LM; the check is for the type checker
        generation.eos_token_id = im_end_id
        generation.pad_token_id = im_end_id
        generation.bos_token_id = bos_id

    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir

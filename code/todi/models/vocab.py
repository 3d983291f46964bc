"""Vocabulary rule for KD (:func:`shared_vocab_size`): the distributions are compared over the ids
both output layers and both tokenizers define, ``min(rows_s, rows_t, len(tok_s), len(tok_t))``;
rows beyond a tokenizer (padding rows) are left out; added special tokens beyond an output layer
(Gemma 3's ``<image_soft_token>``, id 262144 with 262,144 rows) are left out with one log line;
different tokenizers are an error.
"""

from __future__ import annotations

from todi.models.tokenizers import profile_of, prompt_prefix_ids, same_tokenizer, stop_token_ids
from todi.util.log import logger

__all__ = ['check_vocabularies', 'output_rows', 'shared_vocab_size']

def output_rows(model) -> int:
    """The number of rows of the model's output layer (its logits' last dimension); an int is that
    number already (a teacher known by its cached output layer)."""
    if isinstance(model, int):
        return model
    return model.get_output_embeddings().weight.shape[0]


def _beyond_output_layer(tokenizer, rows: int, name: str) -> list[int]:
    """Tokenizer ids ≥ ``rows``: allowed (and returned) when all are added tokens that are none of
    the EOS/pad/BOS/stop tokens (no text the data holds maps there); otherwise an error."""
    n = len(tokenizer)
    if n <= rows:
        return []
    beyond = list(range(rows, n))
    added = getattr(tokenizer, "added_tokens_decoder", {})
    profile = profile_of(tokenizer)
    needed = set(stop_token_ids(tokenizer)) | set(prompt_prefix_ids(tokenizer))
    needed |= {tokenizer.convert_tokens_to_ids(profile.pad), tokenizer.eos_token_id}
    if any(i not in added or i in needed for i in beyond):
        raise ValueError(f"the {name}'s tokenizer has {n} tokens but its output layer only {rows}: "
                         "the ids beyond it include ordinary or end-of-text tokens the model could never predict")
    return beyond


def check_vocabularies(student, teacher, student_tokenizer, teacher_tokenizer) -> int:
    """Check that student and teacher share a vocabulary; return the compared size.

    The size is ``min(student rows, teacher rows, len(student tokenizer), len(teacher tokenizer))``:
    output rows beyond a tokenizer (padding, Qwen-style 152,064 / 151,936 rows for 151,665 tokens)
    are left out, and so are added special tokens beyond an output layer (Gemma 3's
    ``<image_soft_token>``, id 262144 of 262,145, with 262,144 rows), with one log line. Tokenizers
    that give some token different ids are an error (cross-tokenizer KD is not supported).
    """
    v_s, v_t = output_rows(student), output_rows(teacher)
    left_out = {}
    for name, v, tok in (("student", v_s, student_tokenizer), ("teacher", v_t, teacher_tokenizer)):
        left_out.update({i: name for i in _beyond_output_layer(tok, v, name)})
    if not same_tokenizer(student_tokenizer, teacher_tokenizer):
        vocab_s, vocab_t = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        differing = [tok for tok, i in vocab_s.items() if vocab_t.get(tok, i) != i]
        missing = len(vocab_s.keys() ^ vocab_t.keys())
        if differing or missing:
            example = f"e.g. {differing[0]!r}: {vocab_s[differing[0]]} vs {vocab_t[differing[0]]}" if differing else ""
            raise ValueError(
                f"student and teacher vocabularies differ ({len(differing)} tokens with other ids {example}; "
                f"{missing} tokens in only one); KD here compares distributions over the same vocabulary "
                "(cross-tokenizer KD is not supported)"
            )
    vocab = min(v_s, v_t, len(student_tokenizer), len(teacher_tokenizer))
    if left_out:
        ids = sorted(left_out)
        tokens = student_tokenizer.convert_ids_to_tokens(ids[:3])
        logger.info(f"KD leaves out {len(ids)} tokenizer id(s) beyond an output layer "
                    f"({', '.join(f'{t!r} ({i})' for t, i in zip(tokens, ids))}{', ...' if len(ids) > 3 else ''}; "
                    f"rows: student {v_s}, teacher {v_t})")
    return vocab


def shared_vocab_size(student, teacher, student_tokenizer, teacher_tokenizer) -> int:
    """:func:`check_vocabularies`, logged: the number of leading vocabulary entries KD compares
    (pass it to :class:`todi.loss.criterion.DistillationLoss` as ``vocab_size``)."""
    vocab = check_vocabularies(student, teacher, student_tokenizer, teacher_tokenizer)
    v_s, v_t = output_rows(student), output_rows(teacher)
    logger.info(f"KD compares the first {vocab} vocabulary entries (output rows: student {v_s}, teacher {v_t}; "
                f"tokenizer {len(student_tokenizer)}){'; padding rows left out' if max(v_s, v_t) > vocab else ''}")
    return vocab

"""Model families beyond GPT-2/Llama: Qwen2.5, OLMo 2, Gemma 3 (tiny random models, real configs,
real vocabulary sizes, real tokenizers from ../shared/model_hub).

The vocabulary rule: KD compares the ids both output layers and both tokenizers define; padding
rows are left out (Qwen2.5-7B 152,064 / 0.5B 151,936 rows, tokenizer 151,665), a special token
beyond an output layer is left out with a log line (Gemma 3's ``<image_soft_token>``), different
tokenizers are an error. Per-family tokenizer handling: EOS, pad, stop tokens, BOS.
Big vocabularies: batch × length stays tiny.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from todi.loss.criterion import DistillationLoss
from todi.models import (
    PROFILE_FILE,
    load_model,
    load_tokenizer,
    output_rows,
    prompt_prefix_ids,
    save_random_model,
    shared_vocab_size,
    stop_token_ids,
)

from _models import GEMMA_TEXT_SMALL, OLMO_SMALL, QWEN_SMALL, with_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def hub(shared_dir) -> Path:
    return shared_dir / "model_hub"


@pytest.fixture(scope="module")
def qwen_pair(hub, tmp_path_factory):
    """(student dir, teacher dir): Qwen2.5-0.5B (151,936 rows, tied) and 7B (152,064 rows) configs."""
    root = tmp_path_factory.mktemp("qwen")
    tok_dir = hub / "qwen2.5/qwen2.5-0.5b"
    student = save_random_model(tok_dir, root / "student", **QWEN_SMALL)
    teacher = with_tokenizer(hub / "qwen2.5/qwen2.5-7b", tok_dir, root / "teacher", seed=1, **QWEN_SMALL)
    return student, teacher


@pytest.fixture(scope="module")
def gemma_pair(hub, tmp_path_factory):
    """(student dir, teacher dir): Gemma 3 270M (262,144 rows) and the multimodal 4B (262,208 text rows)."""
    from transformers import AutoConfig, Gemma3ForConditionalGeneration

    root = tmp_path_factory.mktemp("gemma")
    tok_dir = hub / "gemma3/gemma-3-270m-it"
    student = save_random_model(tok_dir, root / "student", **GEMMA_TEXT_SMALL)
    config = AutoConfig.from_pretrained(hub / "gemma3/gemma-3-4b-it")
    for key, value in GEMMA_TEXT_SMALL.items():
        setattr(config.text_config, key, value)
    vision = config.vision_config
    vision.num_hidden_layers, vision.hidden_size, vision.intermediate_size = 1, 16, 32
    vision.num_attention_heads, vision.image_size, vision.patch_size = 2, 28, 14
    config.mm_tokens_per_image = 4
    torch.manual_seed(1)
    teacher = root / "teacher"
    Gemma3ForConditionalGeneration(config).save_pretrained(teacher)
    load_tokenizer(tok_dir).save_pretrained(teacher)
    return student, teacher


# ------------------------------------------------------------------------------------------------
# tokenizers per family
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder, eos, pad, stops, prefix", [
    ("gpt2/gpt2-base", 50256, 50256, [50256], []),
    ("tinyllama/tinyllama-1.1b-3T", 2, 2, [2], []),
    # the Instruct tokenizer_config says <|im_end|>; the base models end with <|endoftext|> (official)
    ("qwen2.5/qwen2.5-0.5b", 151643, 151643, [151643, 151645], []),
    # official: pad = EOS (the tokenizer's own <|pad|> 100277 is not used)
    ("olmo2/olmo-2-1124-13b", 100257, 100257, [100257], []),
    # -pt models end with <eos> (1); -it ones with <end_of_turn> (106); <bos> (2) before every prompt
    ("gemma3/gemma-3-270m-it", 1, 1, [1, 106], [2]),
])
def test_load_tokenizer_per_family(hub, folder, eos, pad, stops, prefix):
    tok = load_tokenizer(hub / folder)
    assert (tok.eos_token_id, tok.pad_token_id) == (eos, pad)
    assert stop_token_ids(tok) == stops
    assert prompt_prefix_ids(tok) == prefix


def test_checkpoint_records_the_tokenizer_profile(hub, tmp_path):
    from todi.training.checkpoint import save_model

    tok = load_tokenizer(hub / "qwen2.5/qwen2.5-0.5b")
    model = torch.nn.Linear(2, 2)
    model.save_pretrained = lambda d, **_: (Path(d) / "weights").write_text("")  # only the tokenizer matters
    save_model(model, tok, tmp_path / "ckpt")
    record = json.loads((tmp_path / "ckpt" / PROFILE_FILE).read_text())
    assert record["family"] == "qwen" and record["eos_token_id"] == 151643
    assert record["stop_token_ids"] == [151643, 151645] and record["add_bos"] is False
    again = load_tokenizer(tmp_path / "ckpt")  # no config.json there: the recorded profile decides
    assert again.eos_token_id == 151643 and stop_token_ids(again) == [151643, 151645]


# ------------------------------------------------------------------------------------------------
# the vocabulary rule
# ------------------------------------------------------------------------------------------------

def test_qwen_padding_rows_are_excluded(qwen_pair):
    s_dir, t_dir = qwen_pair
    student, teacher = load_model(s_dir), load_model(t_dir)
    assert (output_rows(student), output_rows(teacher)) == (151936, 152064)
    tok, t_tok = load_tokenizer(s_dir), load_tokenizer(t_dir)
    vocab = shared_vocab_size(student, teacher, tok, t_tok)
    assert vocab == len(tok) == 151665

    ids = torch.tensor([[9707, 1879, 11, 151643]])
    labels = torch.tensor([[-100, 1879, 11, 151643]])
    with torch.no_grad():
        s_logits, t_logits = student(input_ids=ids).logits, teacher(input_ids=ids).logits
    spiked = t_logits.clone()
    spiked[..., 151700] = 60.0  # a padding row of both output layers
    spiked[..., 152000] = 60.0  # a row only the teacher has
    for impl in ("reference", "chunked"):
        loss = DistillationLoss("ToDi", kd_rate=0.5, temperature=2.0, impl=impl, vocab_size=vocab)
        a, b = loss(s_logits, labels, t_logits), loss(s_logits, labels, spiked)
        assert torch.isfinite(a.loss) and a.loss > 0
        torch.testing.assert_close(a.loss, b.loss)
        torch.testing.assert_close(a.stats.kd, b.stats.kd)
    # the fused lm_head path reads the same rule
    hidden = torch.randn(1, 4, 16)
    weight = student.get_output_embeddings().weight.detach()
    fused = DistillationLoss("forward_kl", kd_rate=0.5, impl="chunked", vocab_size=vocab)
    torch.testing.assert_close(fused.loss_from_hidden(hidden, weight, None, labels, t_logits).loss,
                               fused.loss_from_hidden(hidden, weight, None, labels, spiked).loss)
    # the old rule (min of the rows) would have compared the padding row
    old = DistillationLoss("ToDi", kd_rate=0.5, temperature=2.0, impl="chunked")
    assert not torch.allclose(old(s_logits, labels, t_logits).loss, old(s_logits, labels, spiked).loss)
    with pytest.raises(ValueError, match="exceeds"):
        DistillationLoss("ToDi", kd_rate=0.5, vocab_size=152064)(s_logits, labels, t_logits)


def test_adakd_sees_only_the_shared_vocabulary(qwen_pair):
    from todi.loss.adakd import AdaKD

    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(1, 3, 151936), torch.randn(1, 3, 152064)
    labels = torch.tensor([[-100, 5, 151643]])
    spiked = t_logits.clone()
    spiked[..., 151665:] = 60.0
    outs = []
    for teacher in (t_logits, spiked):
        loss = DistillationLoss("reverse_kl", kd_rate=1.0, planner=AdaKD(10), vocab_size=151665)
        outs.append(loss(s_logits, labels, teacher))
    torch.testing.assert_close(outs[0].loss, outs[1].loss)


def test_gemma_image_token_is_excluded_with_a_log_line(gemma_pair, caplog):
    s_dir, t_dir = gemma_pair
    student = load_model(s_dir)
    teacher = load_model(t_dir)  # the multimodal 4B config, loaded as its text-only causal LM
    assert type(teacher).__name__ == "Gemma3ForCausalLM"
    assert (output_rows(student), output_rows(teacher)) == (262144, 262208)
    tok = load_tokenizer(s_dir)
    assert len(tok) == 262145 and tok.convert_ids_to_tokens(262144) == "<image_soft_token>"
    todi_logger = logging.getLogger("todi")  # setup_logging (run in-process earlier) stops propagation
    todi_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="todi"):
            vocab = shared_vocab_size(student, teacher, tok, load_tokenizer(t_dir))
    finally:
        todi_logger.removeHandler(caplog.handler)
    assert vocab == 262144
    lines = [r.getMessage() for r in caplog.records if "<image_soft_token>" in r.getMessage()]
    assert len(lines) == 1, caplog.text

    ids = torch.tensor([[2, 9259, 1902, 1]])
    labels = torch.tensor([[-100, 1902, 1, -100]])
    with torch.no_grad():
        s_logits, t_logits = student(input_ids=ids).logits, teacher(input_ids=ids).logits
    loss = DistillationLoss("ToDi", kd_rate=0.5, temperature=2.0, vocab_size=vocab)(s_logits, labels, t_logits)
    assert torch.isfinite(loss.loss)


def test_multimodal_teacher_matches_its_full_model(gemma_pair):
    from transformers import AutoModelForCausalLM

    _, t_dir = gemma_pair
    full = AutoModelForCausalLM.from_pretrained(t_dir).eval()  # with the vision tower
    text = load_model(t_dir).eval()
    ids = torch.tensor([[2, 9259, 1902]])
    with torch.no_grad():
        torch.testing.assert_close(text(input_ids=ids).logits, full(input_ids=ids).logits)


def test_qwen_student_with_olmo_teacher_is_an_error(qwen_pair, hub, tmp_path):
    from todi.models import check_vocabularies

    s_dir, _ = qwen_pair
    olmo = save_random_model(hub / "olmo2/olmo-2-1124-13b", tmp_path / "olmo", **OLMO_SMALL)
    with pytest.raises(ValueError, match="vocabularies differ"):
        check_vocabularies(load_model(s_dir), load_model(olmo), load_tokenizer(s_dir), load_tokenizer(olmo))


def test_a_missing_ordinary_token_is_still_an_error(hub, tmp_path):
    """Only added special tokens may lie beyond an output layer: an ordinary one is an error."""
    from todi.models import check_vocabularies

    small = save_random_model(hub / "qwen2.5/qwen2.5-0.5b", tmp_path / "q", vocab_size=151000, **QWEN_SMALL)
    model, tok = load_model(small), load_tokenizer(small)
    with pytest.raises(ValueError, match="151665 tokens but its output layer only 151000"):
        check_vocabularies(model, model, tok, tok)


# ------------------------------------------------------------------------------------------------
# generation: no padding row, the family's stop tokens and BOS
# ------------------------------------------------------------------------------------------------

def _capture_generate(model):
    seen = {}
    original = model.generate

    def generate(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.setdefault("inputs", []).append(kwargs["input_ids"])
        seen.setdefault("outputs", []).append(out)
        return out

    model.generate = generate
    return seen


def test_generation_never_samples_a_padding_row(qwen_pair):
    from todi.generation.sampling import SamplingConfig, generate

    s_dir, _ = qwen_pair
    model, tok = load_model(s_dir), load_tokenizer(s_dir)
    padding = torch.arange(len(tok), output_rows(model))
    model.get_output_embeddings().register_forward_hook(lambda m, i, out: out.index_fill(-1, padding, 80.0))
    seen = _capture_generate(model)
    config = SamplingConfig(max_length=14, max_prompt_length=8, no_repeat_ngram_size=0)
    generate(model, tok, ["Hello world", "Tell me"], config, seed=10, batch_size=2)
    new = torch.cat([o[:, i.shape[1]:] for i, o in zip(seen["inputs"], seen["outputs"])])
    assert new.numel() and int(new.max()) < len(tok)


def test_gemma_generation_prepends_bos_and_stops_at_end_of_turn(gemma_pair):
    from todi.generation.sampling import SamplingConfig, generate

    s_dir, _ = gemma_pair
    model, tok = load_model(s_dir), load_tokenizer(s_dir)
    force = torch.full((output_rows(model),), -80.0)
    force[106] = 80.0  # <end_of_turn>, a stop token besides <eos>
    model.get_output_embeddings().register_forward_hook(lambda m, i, out: out + force)
    seen = _capture_generate(model)
    config = SamplingConfig(max_length=20, max_prompt_length=8, no_repeat_ngram_size=0)
    answers = generate(model, tok, ["Hello world"], config, seed=10)
    assert answers == [""]
    (inputs,), (out,) = seen["inputs"], seen["outputs"]
    assert inputs[0, 0].item() == 2  # <bos>
    assert out.shape[1] == inputs.shape[1] + 1 and out[0, -1].item() == 106

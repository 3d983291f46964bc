"""Models: tokenizers and family profiles, loading (LoRA, dtype), the vocabulary rule, the fused student head.

The package's public names are importable from ``todi.models`` (the modules hold one concept each).
"""

from todi.models.loading import (  # noqa: F401 (the public names)
    ATTENTION_PROJECTIONS, build_student, build_teacher, load_model, optimizer_param_groups, save_random_model,
)
from todi.models.tokenizers import (  # noqa: F401
    PROFILE_FILE, TokenizerProfile, load_tokenizer, model_family, prompt_prefix_ids, same_tokenizer,
    save_tokenizer_profile, stop_token_ids, tokenizer_profile,
)
from todi.models.vocab import check_vocabularies, output_rows, shared_vocab_size  # noqa: F401

"""Tiny, offline models for tests, doctests and quick notebook experiments.

Everything here is built from a config in memory: no hub, no weights on disk. The tokenizer is a
real (word-level) Hugging Face tokenizer with a real chat template, so every code path that formats
chats, pads batches and decodes text runs exactly as it does on a large model.

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> model = tiny_model()
    >>> model.cfg.n_layers, model.cfg.d_model
    (3, 16)
"""

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

__all__ = [
    "TINY_WORDS",
    "TINY_REQUESTS",
    "JUDGE_LABELS",
    "tiny_tokenizer",
    "tiny_model",
    "tiny_hf_model",
    "tiny_causal_lm",
    "save_tiny_model",
]

TINY_WORDS: tuple[str, ...] = tuple(
    (
        "the a an cat dog bird sat on mat is was good bad happy sad kind rude honest liar "
        "harmless harmful helpful helpless assistant user system you are i am very not and "
        "or but please help me with my tell write explain how what why when where who about "
        "story poem email list answer question short long today tomorrow food water code bug "
        "fix make plan trip money save learn word , . ? !"
    ).split()
)

TINY_REQUESTS: tuple[str, ...] = (
    "tell me a story",
    "how do i fix my code",
    "what is good food",
    "write a poem about the cat",
    "help me plan a trip",
    "explain money",
    "why is the dog happy",
    "make a list of food",
    "the cat sat on the mat",
    "i am very happy",
)
"""Ten requests written in :data:`TINY_WORDS` only, for tests that generate with a tiny model."""

_CHAT_TEMPLATE = (
    "{{ '<bos>' }}{% for m in messages %}{{ '<turn> ' + m['role'] + ' : ' + m['content'] + ' <end> ' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<turn> assistant : ' }}{% endif %}"
)


#: Appended to the vocabulary by ``tiny_tokenizer(judge_labels=True)``: the answer labels of the
#: self-judges (ratings 1-9, responses A/B), after every other word so the other ids do not move.
JUDGE_LABELS: tuple[str, ...] = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "A", "B")


@lru_cache(maxsize=4)
def _tiny_tokenizer_dir(chat_template: bool, judge_labels: bool = False) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<end>", "<unk>", "<turn>"]
    words = [*specials, *TINY_WORDS, ":", *(JUDGE_LABELS if judge_labels else ())]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<end>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<turn>"],
    )
    if chat_template:
        tok.chat_template = _CHAT_TEMPLATE
    # Round-trip through disk: TransformerLens reads init_kwargs["name_or_path"], which an
    # in-memory tokenizer lacks. One directory per variant, shared by processes, written atomically.
    out = (
        Path(tempfile.gettempdir())
        / f"icon2_lens_tiny_tokenizer_v1_{int(chat_template)}{'_j' * judge_labels}"
    )
    if not (out / "tokenizer_config.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        tok.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def tiny_tokenizer(
    *, chat_template: bool = True, judge_labels: bool = False
) -> PreTrainedTokenizerBase:
    """A word-level tokenizer over :data:`TINY_WORDS` with a small chat template.

    Args:
        chat_template: Attach the chat template (``False`` builds a "base model" tokenizer, for
            testing the error raised on models without one).
        judge_labels: Also know :data:`JUDGE_LABELS`, so the self-judges can read a verdict.

    Returns:
        A fresh ``PreTrainedTokenizerFast`` (left padding, ``<end>`` as end of turn).

    Example:
        >>> tok = tiny_tokenizer()
        >>> tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False)
        '<bos><turn> user : hello <end> '
    """
    tok = AutoTokenizer.from_pretrained(
        _tiny_tokenizer_dir(chat_template, judge_labels), local_files_only=True
    )
    tok.padding_side = "left"
    return tok


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    n_layers: int = 3,
    d_model: int = 16,
    seed: int = 0,
    attentive: bool = False,
):
    """The plain Hugging Face tiny Llama (not wrapped), e.g. to save as a model directory.

    With the default weights the output barely depends on the context (the scaled-up embeddings
    swamp what attention adds); ``attentive=True`` scales the attention projections up so that,
    e.g., a system prompt changes the greedy answer.

    Example:
        >>> tiny_causal_lm(n_layers=2).config.num_hidden_layers
        2
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )
        hf = LlamaForCausalLM(config).eval()
        # Random tiny weights give a near-flat residual stream; scale the embeddings up so
        # activations differ clearly between prompts.
        with torch.no_grad():
            hf.model.embed_tokens.weight.mul_(50.0)
            if attentive:
                for layer in hf.model.layers:
                    for proj, scale in (
                        ("q_proj", 5),
                        ("k_proj", 5),
                        ("v_proj", 20),
                        ("o_proj", 20),
                    ):
                        getattr(layer.self_attn, proj).weight.mul_(scale)
    finally:
        torch.random.set_rng_state(generator_state)
    hf.generation_config.pad_token_id = tok.pad_token_id
    hf.config.architectures = ["LlamaForCausalLM"]
    return hf


def save_tiny_model(path: str | Path, *, judge_labels: bool = False, **kwargs) -> Path:
    """Save the tiny model and its tokenizer as an HF directory that ``load_model(path)`` accepts.

    ``judge_labels`` gives the tokenizer the self-judges' answer labels (see :func:`tiny_tokenizer`);
    other keyword arguments go to :func:`tiny_causal_lm`.

    Example:
        >>> import tempfile
        >>> from icon2_lens.model.load import load_model
        >>> with tempfile.TemporaryDirectory() as d:
        ...     load_model(save_tiny_model(d)).cfg.n_layers
        3
    """
    path = Path(path)
    tok = tiny_tokenizer(judge_labels=judge_labels)
    tiny_causal_lm(tok, **kwargs).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_hf_model(
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    n_layers: int = 3,
    d_model: int = 16,
    seed: int = 0,
):
    """A randomly initialised tiny Llama wrapped in a ``TransformerBridge``.

    Uses the same adapter path as real Hugging Face checkpoints (RMSNorm, rotary embeddings,
    grouped-query attention, KV-cached generation), so tests on it exercise the code a real model
    runs.

    Args:
        tokenizer: Tokenizer to attach; defaults to :func:`tiny_tokenizer`.
        n_layers: Number of transformer blocks.
        d_model: Residual stream width (a multiple of 4).
        seed: Seed of the weight initialisation.

    Returns:
        A ``TransformerBridge`` in eval mode on CPU, float32.

    Example:
        >>> m = tiny_hf_model(n_layers=2)
        >>> m.cfg.n_layers
        2
    """
    from transformer_lens.model_bridge import TransformerBridge

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    hf = tiny_causal_lm(tok, n_layers=n_layers, d_model=d_model, seed=seed)
    return TransformerBridge.boot_transformers(
        "icon2-tiny-llama", hf_model=hf, tokenizer=tok, device="cpu"
    ).eval()


def tiny_model(
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    n_layers: int = 3,
    d_model: int = 16,
    seed: int = 0,
):
    """The default tiny model for examples: :func:`tiny_hf_model` with its defaults.

    Example:
        >>> tiny_model().cfg.model_name
        'icon2-tiny-llama'
    """
    return tiny_hf_model(tokenizer, n_layers=n_layers, d_model=d_model, seed=seed)

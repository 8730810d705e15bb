import pytest

from icon2_lens.model.chat import render_chat, user_turn_template
from icon2_lens.testing import tiny_tokenizer


def test_prefix_and_end_rebuild_the_rendered_chat():
    tok = tiny_tokenizer()
    t = user_turn_template(tok)
    full = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False)
    assert full == t.prefix + "hello" + t.end_of_turn
    assert render_chat(tok, "hello").startswith(t.prefix + "hello" + t.end_of_turn)


def test_system_prompt_goes_into_the_prefix():
    t = user_turn_template(tiny_tokenizer(), system="you are kind")
    assert t.prefix == "<bos><turn> system : you are kind <end> <turn> user : "


def test_chatml_like_template_with_default_system(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nDefault.<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    t = user_turn_template(tok)
    assert t.prefix == "<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\n"
    assert t.end_of_turn == "<|im_end|>\n"


def test_templates_that_cannot_be_read():
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(ValueError, match="verbatim"):
        user_turn_template(tok)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="end-of-turn"):
        user_turn_template(tok)
    with pytest.raises(ValueError, match="no chat template"):
        user_turn_template(tiny_tokenizer(chat_template=False))

from icon2_lens.model.compat import forward_options, output_cache


class _New:
    def forward(self, input_ids=None, cache=None, use_cache=None, logits_to_keep=0): ...


class _Old:
    def forward(self, input_ids=None, past_key_values=None, use_cache=None): ...


class _Out:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_cache_argument_follows_the_forward_signature():
    assert forward_options(_New(), cache="c", use_cache=True, last_logits_only=True) == {
        "use_cache": True,
        "cache": "c",
        "logits_to_keep": 1,
    }
    assert forward_options(_Old(), cache="c", use_cache=True, last_logits_only=True) == {
        "use_cache": True,
        "past_key_values": "c",
    }
    assert forward_options(_New(), use_cache=False) == {"use_cache": False}


def test_output_cache_reads_either_name():
    assert output_cache(_Out(cache="a")) == "a"
    assert output_cache(_Out(cache=None, past_key_values="b")) == "b"
    assert output_cache(_Out()) is None

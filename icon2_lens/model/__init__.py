"""The model: loading, chat formatting, hook names, the fast twin, residual reading, generation, cost.

Everything the other stages need from a language model, and nothing about preferences:

* :mod:`~icon2_lens.model.load` loads a model as a TransformerLens ``TransformerBridge`` (the
  embedded SmolLM2-135M-Instruct by default, offline), fingerprints its weights and checks that
  anything applied to it fits (:func:`~icon2_lens.model.load.check_fits`).
* :mod:`~icon2_lens.model.chat` renders chats with the model's own template and reads the template.
* :mod:`~icon2_lens.model.hooks` builds hook names and defines the residual-edit protocol.
* :mod:`~icon2_lens.model.twin` runs the same weights through Hugging Face's SDPA modules.
* :mod:`~icon2_lens.model.collect` caches last-token residuals; :mod:`~icon2_lens.model.read`
  reads residuals and NLL over responses.
* :mod:`~icon2_lens.model.generate` is the one generation loop (KV cache, per-row seeds, edits).
* :mod:`~icon2_lens.model.cost` meters wall clock and forward tokens per stage.

Reads: model weights (the cache under ``~/.cache/icon2_lens``, a directory, or a hub id from the
local Hugging Face cache unless downloads are allowed).
Writes: the dequantised embedded model into that cache, once.
May import: nothing of icon2_lens but its low-level modules (_files, _types, _config, _cache,
_network, figures).
"""

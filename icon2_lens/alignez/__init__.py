"""AlignEZ: inference-time alignment from the model's own preference pairs, with no training (the
``alignez`` stage).

The model writes its own preference data, the difference between the two sides gives a small
subspace per layer, and generation is edited inside that subspace with gates that depend on the
residual stream itself.

1. **Self-generated pairs** (:func:`generate_self_pairs`). For each fit query ``q`` the model is
   asked, through its chat template (greedy by default), for one short sentence saying what a *good*
   answer to ``q`` would do (:data:`DESCRIBE_HELP`), and separately for one saying what a *bad*
   answer (unhelpful, careless or harmful) would do (:data:`DESCRIBE_HARM`). It then answers ``q``
   twice, each time with one of the descriptions as its system prompt (:data:`RESPOND_SYSTEM`),
   so the two answers differ only by the description they follow. A query is dropped when a
   description or an answer is empty or a repetition loop (:func:`~icon2_lens.judge.rules.degeneracy`),
   or when the two answers are token-identical.
2. **Embeddings.** Each answer is read under the *plain* prompt (``q`` alone, wrapped by the chat
   template, no description) followed by the answer: the residual stream (``resid_post``)
   averaged over the answer's tokens, at every layer (:func:`~icon2_lens.model.read.read_responses`).
   Pairs whose two embeddings are too similar are dropped (``max_similarity``; the cosine is
   taken per layer after removing the mean embedding of all answers, ``similarity="centered"``,
   or raw, and averaged over layers). The default threshold (0.99) drops near-duplicates only;
   a lone pair's centred cosine is always −1, so it is never dropped as similar.
3. **Subspace** (:func:`fit_subspace`). Per layer, ``D = H_help − H_harm`` (``[n_pairs, d_model]``)
   is decomposed by an uncentred SVD. Its top ``k`` right singular vectors, each oriented so that
   ``mean(D · θ) > 0``, are the *help* directions. The *harm* directions (``harm``) are:

   ``mirror`` (default)
       the same axes pointing the other way, ``η_j = −θ_j``: a position "holds harm" on an axis
       when it sits on the harm side of it. Help and harm then edit one subspace, and along each
       axis the combined edit ``s·r·(tanh(p) + ReLU(−p))`` is never negative for ``s ≥ 0`` (the
       harm removal outweighs the tanh wherever the projection ``p`` is negative).
   ``subspace``
       the top ``k`` right singular vectors of the harm answers' embeddings after removing the
       shared mean of all ``2·n_pairs`` answers, oriented so that the harm answers project
       positively on average: what the harm answers have in common beyond the shared mean,
       which need not be the contrast itself.

   Singular vectors beyond the rank of the data (fewer pairs than ``k``) are stored as zero
   vectors and never used.
4. **Layers.** Explicit ``layers``, or the ``n_edit_layers`` candidate layers (default: the middle
   half of the network, where the method is reported to work best) with the largest score:
   ``difference`` (default) is ``mean_i ‖D_i‖ / n_l`` (the help/harm difference relative to the
   layer's residual norm ``n_l``); ``separation`` is the two-fold held-out accuracy of the top
   help direction (fit on the even pairs, test ``D · θ > 0`` on the odd ones, and back).
5. **Per-query filter** (:func:`filter_directions`). For a prompt, ``Φ_l`` is its last-token
   residual at layer ``l`` (:func:`~icon2_lens.model.collect.collect_resid`), ``z = Φ_l − μ_l`` with
   ``μ_l`` the mean ``Φ_l`` of the fit queries (``center=True``) or ``z = Φ_l`` (``center=False``).
   A help direction is kept iff ``cos(z, θ) ≤ 0``: a direction the query does not already
   express. Harm directions (``harm_filter``): ``always`` (default) keeps every one, because the
   ReLU gate below *is* the presence test and applies it at every position rather than once per
   query; ``expressed`` keeps ``η`` iff ``cos(z, η) ≥ 0`` (the query leans towards it or is
   neutral) — with ``mirror`` this keeps exactly the axes whose help half is kept.
6. **Gated edit** (:func:`gated_edit`, :class:`AlignEZEditor`). At each chosen layer and every
   position (prompt and generated tokens; ``positions="generated"``: only from the last prompt
   token on), with ``p_θ = ⟨x − c_l, θ⟩ / τ_l``::

       x ← x + s·r_l·Σ_θ m_θ·tanh(p_θ)·θ − s·r_l·Σ_η m_η·ReLU(p_η)·η

   where ``m`` are the query's kept-direction masks, ``s`` is ``strength`` and every term is
   computed from the same input ``x``. ``s = 0`` attaches nothing, so the model is exactly
   unchanged; negative ``s`` reverses the edit.

Scales (``unit``, ``gate_scale``, ``edit_scale``). Unit directions are tiny next to residual norms
on real models, so by default (``unit="relative"``) both the gate temperature ``τ_l`` and the push
``r_l`` are fractions of ``n_l``, the mean norm of the (token-averaged) answer embeddings at layer
``l``: ``τ_l = gate_scale·n_l``, ``r_l = edit_scale·n_l``; ``unit="absolute"`` uses the two numbers
as they are. ``edit_scale`` defaults to ``gate_scale``; with ``r = τ`` the harm term at ``s = 1``
removes exactly the part of the harm component that is present (``x − ReLU(⟨x − c, η⟩)·η``) and
the help push saturates at ``s·τ_l``. The defaults (``k=2``, three layers, ``gate_scale=0.05``)
are starting points, not values tuned on a real model: sweep ``strength`` before relying on them.

Centring (``center``). Residual streams carry a large offset common to all inputs, so the raw sign
of ``⟨x, θ⟩`` says more about that offset than about the text. With ``center=True`` (default) the
gates are measured from ``c_l``, the midpoint of the mean help and mean harm embeddings, and the
filter from ``μ_l``; ``center=False`` is the literal ``⟨x, θ⟩`` and ``cos(Φ, θ)``.

Every choice above is an option of :class:`AlignEZConfig` and is saved with the edit.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> axis = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    >>> harm = torch.randn(32, 16, generator=g)
    >>> help_ = harm + 2.0 * axis + 0.05 * torch.randn(32, 16, generator=g)
    >>> from icon2_lens.alignez.subspace import fit_subspace
    >>> sub = fit_subspace(help_, harm, k=2)
    >>> float(sub.help[0] @ axis) > 0.99, bool(torch.equal(sub.harm, -sub.help))
    (True, True)

Modules: :mod:`~icon2_lens.alignez.config` (``AlignEZConfig``, prompts), :mod:`~icon2_lens.alignez.subspace`
(the math), :mod:`~icon2_lens.alignez.edit` (``AlignEZEdit`` and its files), :mod:`~icon2_lens.alignez.apply`
(filter, gates, editor, generation), :mod:`~icon2_lens.alignez.fit` (steps 1-4).

Reads: the model, fit queries. Writes: ``pairs.jsonl`` + ``pairs_settings.json`` (resumable),
``alignez.safetensors`` + ``alignez.json``.
May import: model, judge.
"""

"""GPTModel: GPT-2 as two readable functions, forward and backward, chaining the layers by hand.

    idx -> embedding (tok + pos) -> dropout -> [block] x L -> ln_f -> head -> out -> loss
    grads: the same chain in reverse, each layer's backward consuming the cache its forward returned.

The head is the config's choice (``minigpt/heads.py``): the LM head, logits (B, T, V) over the
vocabulary at every position, or a classification head (``cfg.num_classes``), logits (B, n) from one
pooled vector per sequence. The loss is applied at the positions the task chooses: the targets'
-100 leaves positions out (instruction tuning), the pooling picks the position of a classifier.

Three levels of use:

    loss, grads = model.loss_and_grads(idx, targets)      # cross-entropy + backward, in one call
    out, cache = model.forward_train(idx)                 # any other loss (DPO): the forward ...
    grads = model.backward(dout, cache)                   # ... and the backward from dL/dout

Parameters live in ONE flat buffer (``flat_params``) and ``params`` holds named views into it, with
Hugging Face GPT-2 names and the ``x @ W`` layout; gradients likewise (``flat_grads``, ``grads``).
AdamW and gradient clipping are then single passes over one vector, a gradient check can walk one
vector, and a checkpoint is one array. Names, shapes, order, initialisation and trainable flags come
from the parameter table (``minigpt.params``, ``model.table``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import NamedTuple

import numpy as np

from minigpt import backend, heads
from minigpt.block import block_backward, block_forward, block_step
from minigpt.config import GPTConfig
from minigpt.inference.kv_cache import KVCache
from minigpt.stash import Stash, block_slabs
from minigpt.params import (  # noqa: F401  (param_shapes: the model's names and shapes, for callers)
    INIT_SCHEMES,
    ParamSpec,
    block_index,
    count,
    init_params,
    named_views,
    offsets,
    param_shapes,
    param_table,
    runs,
)
from minigpt.layers.pooling import check_lengths

SUPPORTED_DTYPES = (np.float32, np.float64)


def _block_dicts(views: dict[str, np.ndarray], n_layers: int) -> list[dict[str, np.ndarray]]:
    """Per-block dicts keyed by the name inside the block ("ln_1.weight", ...), sharing the views."""
    blocks: list[dict[str, np.ndarray]] = [{} for _ in range(n_layers)]
    for name, arr in views.items():
        if name.startswith("h."):
            _, i, rest = name.split(".", 2)
            blocks[int(i)][rest] = arr
    return blocks


class TrainCache(NamedTuple):
    """What ``forward_train`` keeps for ``backward``: each layer's cache, in forward order."""

    emb: tuple
    drop: object
    blocks: list
    lnf: tuple
    head: tuple
    out_shape: tuple[int, ...]   # the head's output, which ``dout`` must match


class GPTModel:
    """GPT-2 with hand-written forward and backward (the book's ``GPTModel``, chapters 4-6).

    ``GPTModel(cfg, seed=123, dtype=np.float32)`` initialises like GPT-2 (``init="gpt2"``):
    normal(0, 0.02) for the embeddings and weight matrices, 0.02 / sqrt(2 L) for the two projections
    that write into the residual stream, zeros for biases, ones for layernorm scales.
    ``init="torch"`` initialises as PyTorch's default modules do for the book's model (embeddings
    normal(0, 1), linear layers U(+-1/sqrt(fan_in)), layernorm ones and zeros); ``init=None`` leaves
    zeros (for weights loaded next). Both rules are columns of the parameter table
    (``minigpt.params``), drawn from ``np.random.default_rng(seed)`` in buffer order.

    ``extra``: more ``ParamSpec`` rows (adapters, heads) appended to the table and the flat buffer.

    Frozen parameters (``freeze`` / ``unfreeze``): AdamW neither updates nor decays them and keeps
    no moments for them, clipping leaves them out of the norm, their gradients are not computed
    (a frozen linear's backward skips dW), and the backward stops below the lowest layer that has
    a trainable parameter (see ``loss_and_grads``).
    A classification head (``cfg.num_classes``) is initialised under either rule as the fresh
    ``nn.Linear`` the book puts there: weight and bias uniform in +-1/sqrt(C). It comes last in the
    buffer, so for one seed the rest of the model holds the same numbers as the LM model's.
    """

    # rows per chunk of the LM head's loss in ``loss`` / ``loss_and_grads`` (heads.lm_head_loss);
    # None: chunks of at most heads.LOSS_CHUNK_BYTES of logits
    loss_chunk_rows: int | None = None
    # True: the blocks do not keep GELU's input u for the backward but recompute it, one more
    # (C, 4C) product per block (minigpt/block.py), for about 5% more time per step; the same bits
    # either way. It saves memory only where the caches do not fit in the gradient buffer
    # (minigpt/stash.py): at GPT-2 124M, batch 4 x 128, they fit, and u costs no memory there
    recompute_mlp: bool = False
    # the attention in the backward: None recomputes it only where its weights (B, H, T, T) are
    # larger than GELU's input (H T > 4 C; minigpt/block.py, recomputes_attention), True always
    # (less memory), False never (less time); the same bits either way
    recompute_attention: bool | None = None

    def __init__(self, cfg: GPTConfig, seed: int | None = 123, dtype=np.float32, *,
                 init: str | None = "gpt2", extra: Sequence[ParamSpec] = ()):
        if not isinstance(cfg, GPTConfig):
            raise ValueError(f"cfg must be a minigpt.GPTConfig, got {type(cfg).__name__}; "
                             "build one with GPTConfig(...) or GPTConfig.from_dict(d)")
        dtype = np.dtype(dtype).type
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype).name}")
        if init is not None and init not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {INIT_SCHEMES} (or None: zeros), got {init!r}")
        self.cfg = cfg
        self.dtype = dtype
        self.extra = tuple(extra)                     # rows beyond the config's (LoRA adapters)
        self.table = param_table(cfg, extra)          # one ParamSpec per parameter, buffer order
        self.shapes = {s.name: s.shape for s in self.table}
        self.ranges = offsets(self.table)             # name -> (start, stop) in the flat buffer
        n = count(self.table)
        self.flat_params = np.zeros(n, dtype=dtype)
        self.flat_grads = np.zeros(n, dtype=dtype)
        self._slabs = None                            # per block: its run of flat_grads (_stashes)
        self.params = named_views(self.flat_params, self.table)
        self.grads = named_views(self.flat_grads, self.table)
        self._block_params = _block_dicts(self.params, cfg.n_layers)
        self._decode_plan: dict = {}                  # kernels: where decoding reads the weights
        if cfg.lora_rank:   # LoRA adapters (minigpt.lora) are scaled by alpha / r; the blocks read it
            for bp in self._block_params:
                bp["lora_scale"] = cfg.lora_scale
        self._trainable_changed()
        self.init = init
        self._init_weights(np.random.default_rng(seed))

    def copy(self) -> GPTModel:
        """A separate model with the same numbers, rows and frozen set (its own flat buffers).

        ``copy.deepcopy`` calls this too: copying the attributes one by one would give the copy
        named views that still point into the original's buffer."""
        twin = GPTModel(self.cfg, seed=None, dtype=self.dtype, init=None, extra=self.extra)
        twin.init = self.init
        twin.flat_params[...] = self.flat_params
        twin.flat_grads[...] = self.flat_grads
        twin.loss_chunk_rows, twin.recompute_mlp = self.loss_chunk_rows, self.recompute_mlp
        twin.recompute_attention = self.recompute_attention
        if self.frozen_names():
            twin.freeze(self.frozen_names())
        return twin

    def __deepcopy__(self, memo) -> GPTModel:
        return self.copy()

    # --- set-up ---------------------------------------------------------------------------------
    def _init_weights(self, rng: np.random.Generator) -> None:
        if self.init is not None:
            init_params(self.params, self.table, self.init, rng)   # float64 draws: same in f32/f64

    def init_weights(self, init: str = "gpt2", seed: int | None = 123) -> None:
        """Re-initialise every parameter in place by the table's ``init`` rule ("gpt2" or
        "torch"), from ``np.random.default_rng(seed)``: the same numbers as
        ``GPTModel(cfg, seed, init=init)``."""
        init_params(self.params, self.table, init, np.random.default_rng(seed))
        self.init = init

    # --- frozen parameters ----------------------------------------------------------------------
    def _select(self, which, what: str) -> set[str]:
        """Names chosen by ``which``: None (all), a name or glob pattern ("h.11.*"), an iterable of
        them, or a predicate name -> bool."""
        if which is None:
            return set(self.shapes)
        if callable(which):
            return {n for n in self.shapes if which(n)}
        patterns = [which] if isinstance(which, str) else list(which)
        chosen: set[str] = set()
        for pat in patterns:
            if not isinstance(pat, str):
                raise ValueError(f"{what}: expected parameter names or glob patterns, got {pat!r}")
            hit = {n for n in self.shapes if n == pat or fnmatchcase(n, pat)}
            if not hit:
                raise ValueError(f"{what}: {pat!r} names no parameter of this model; names look "
                                 f"like 'ln_f.weight', 'h.0.attn.c_attn.weight' (patterns: 'h.11.*')")
            chosen |= hit
        return chosen

    def _set_trainable(self, which, flag: bool, what: str) -> list[str]:
        chosen = self._select(which, what)
        self.table = [replace(s, trainable=flag) if s.name in chosen else s for s in self.table]
        self._trainable_changed()
        return [s.name for s in self.table if s.name in chosen]

    def freeze(self, which: str | Iterable[str] | Callable[[str], bool] | None = None) -> list[str]:
        """Freeze parameters: ``None`` (all), a name, a glob pattern (``"h.*"``), a list of them,
        or a predicate on the name. Returns the names chosen."""
        return self._set_trainable(which, False, "freeze")

    def unfreeze(self, which: str | Iterable[str] | Callable[[str], bool] | None = None) -> list[str]:
        """Make parameters trainable again (the same ``which`` as ``freeze``)."""
        return self._set_trainable(which, True, "unfreeze")

    def trainable_names(self) -> list[str]:
        return [s.name for s in self.table if s.trainable]

    def frozen_names(self) -> list[str]:
        return [s.name for s in self.table if not s.trainable]

    @property
    def num_trainable(self) -> int:
        return count(self.table, lambda s: s.trainable)

    def trainable_ranges(self) -> tuple[tuple[int, int], ...]:
        """The (start, stop) runs of the flat buffer that train, neighbours merged."""
        return self._trainable_ranges

    def _trainable_changed(self) -> None:
        self._trainable_ranges = tuple(runs(self.table, lambda s: s.trainable))
        self._trainable = {s.name: s.trainable for s in self.table}
        self._grad_floor = self._lowest_trainable_layer()
        self._active_grads()

    def _active_grads(self) -> None:
        """Where the backward writes: ``self._blocks_g`` (one dict per block, keyed inside the
        block) and ``self._top_g`` (the rest, by name). A trainable parameter maps to its view of
        ``flat_grads``. A frozen linear weight or bias maps to None (left out of a block's dict),
        and its layer's backward skips its product (``minigpt/frozen.py``: no dW, the LoRA
        speed-up). A frozen layernorm gain or bias, or LoRA matrix, whose backward computes them in
        the pass that computes dx, gets a scratch array instead. Either way the gradient buffer of
        a frozen parameter is never written: it stays zero."""
        def active(name: str):
            if self._trainable[name]:
                return self.grads[name]
            if "ln_" in name or ".lora_" in name:
                return np.zeros_like(self.grads[name])           # computed, then dropped
            return None                                          # not computed at all

        self._blocks_g = [{} for _ in range(self.cfg.n_layers)]
        self._top_g = {}
        for name in self.grads:
            g = active(name)
            i = block_index(name)
            if i is None:
                self._top_g[name] = g
            elif g is not None:
                self._blocks_g[i][name.split(".", 2)[2]] = g

    def _lowest_trainable_layer(self) -> int:
        """Where the backward may stop: -1 (the embedding) when wte or wpe trains, or a trainable
        parameter whose place in the network this method does not know; i when block i is the
        lowest with a trainable parameter; n_layers when only ln_f and the head train, or nothing."""
        lowest = self.cfg.n_layers
        for s in self.table:
            if not s.trainable:
                continue
            i = block_index(s.name)
            if i is not None:
                lowest = min(lowest, i)
            elif s.name not in ("ln_f.weight", "ln_f.bias", "lm_head.weight", "out_head.weight",
                                "out_head.bias", "out_head.lora_A", "out_head.lora_B"):
                return -1
        return lowest

    @property
    def num_params(self) -> int:
        return self.flat_params.size

    def head_weight(self) -> np.ndarray:
        """The LM head's (V, C) weight: ``wte`` itself when tied."""
        if self.cfg.num_classes is not None:
            raise ValueError("this model has a classification head (params['out_head.weight']), "
                             "not an LM head")
        return self.params["wte.weight" if self.cfg.tie_weights else "lm_head.weight"]

    def _head_grad(self) -> np.ndarray | None:
        """Where the LM head's (V, C) gradient accumulates: ``wte``'s gradient when tied; None
        when that weight is frozen (its gradient is then not computed)."""
        return self._top_g["wte.weight" if self.cfg.tie_weights else "lm_head.weight"]

    def zero_grad(self) -> None:
        self.flat_grads[...] = 0

    # --- input checks ---------------------------------------------------------------------------
    def _check_idx(self, idx, t0: int = 0, what: str = "idx") -> np.ndarray:
        idx = np.asarray(idx)
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{what} must hold integer token ids, got dtype {idx.dtype}; "
                             "convert with np.asarray(ids, dtype=np.int64)")
        if idx.ndim != 2:
            raise ValueError(f"{what} must have shape (batch, time), got shape {idx.shape}; "
                             "for one sequence use ids[None, :]")
        B, T = idx.shape
        if B == 0 or T == 0:
            raise ValueError(f"{what} is empty (shape {idx.shape}); give at least one token")
        if t0 + T > self.cfg.context_length:
            where = f" after {t0} cached tokens" if t0 else ""
            raise ValueError(f"sequence of {T} tokens{where} is longer than context_length="
                             f"{self.cfg.context_length}; crop the input to its last "
                             f"{self.cfg.context_length - t0} tokens")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what} holds token id {bad}, outside the vocabulary [0, "
                             f"{self.cfg.vocab_size}); the model's vocab_size is {self.cfg.vocab_size}")
        return idx

    def _check_targets(self, targets, idx: np.ndarray) -> np.ndarray:
        targets = np.asarray(targets)
        if targets.dtype == bool or not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(f"targets must hold integer token ids, got dtype {targets.dtype}")
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {targets.shape} does not match idx shape {idx.shape}; "
                             "targets are the inputs shifted by one token, one per position")
        ok = (targets == -100) | ((targets >= 0) & (targets < self.cfg.vocab_size))
        if not ok.all():
            bad = targets[~ok].flat[0]
            raise ValueError(f"targets hold {bad}, neither a token id in [0, {self.cfg.vocab_size}) "
                             "nor -100 (the ignore index)")
        return targets

    def _check_labels(self, labels, idx: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels)
        n, B = self.cfg.num_classes, idx.shape[0]
        if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}")
        if labels.shape != (B,):
            raise ValueError(f"a classifier takes one label per sequence: shape ({B},), got "
                             f"{labels.shape}")
        ok = (labels == -100) | ((labels >= 0) & (labels < n))
        if not ok.all():
            raise ValueError(f"labels hold {labels[~ok][0]}, neither a class id in [0, {n}) nor "
                             f"-100 (the ignore index); the model has num_classes={n}")
        return labels

    def _check_lengths(self, lengths, idx: np.ndarray):
        if self.cfg.num_classes is None:
            if lengths is not None:
                raise ValueError("lengths apply to a classification head (cfg.num_classes); the LM "
                                 "head scores every position: leave padding out of the loss with "
                                 "-100 targets instead")
            return None
        return check_lengths(lengths, *idx.shape, self.cfg.pooling)

    # --- forward --------------------------------------------------------------------------------
    def _trunk_forward(self, idx: np.ndarray, rng: np.random.Generator | None, keep_caches: bool,
                       stashes: list | None = None):
        """idx (B, T) -> the final hidden states (ln_f's output, (B, T, C)) and the caches of the
        embedding, its dropout, the blocks and ln_f (None without ``keep_caches``). ``stashes``:
        per block, where its cache keeps its arrays (``_stashes``), or None."""
        cfg, p, ops = self.cfg, self.params, backend.ops()
        x, c_emb = ops.embedding_forward(idx, p["wte.weight"], p["wpe.weight"])    # (B, T) -> (B, T, C)
        x, c_drop = ops.dropout_forward(x, cfg.drop_rate, rng)                      # (B, T, C)
        c_blocks = []
        for i, bp in enumerate(self._block_params):
            stash = stashes[i] if stashes else None
            if stash is not None:
                x = stash.keep(x)          # the block keeps its input: no second copy alive
            x, c = block_forward(x, bp, cfg.n_heads, cfg.drop_rate, rng,        # (B, T, C)
                                 recompute_mlp=self.recompute_mlp and keep_caches, stash=stash,
                                 recompute_attention=self.recompute_attention)
            if keep_caches:
                c_blocks.append(c)
        x, c_lnf = ops.layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])       # (B, T, C)
        return x, ((c_emb, c_drop, c_blocks, c_lnf) if keep_caches else None)

    def _forward(self, idx: np.ndarray, rng: np.random.Generator | None, keep_caches: bool,
                 lengths: np.ndarray | None = None):
        x, trunk = self._trunk_forward(idx, rng, keep_caches)                      # (B, T, C)
        out, c_head = self._head_forward(x, lengths)             # (B, T, V), or (B, n) for a classifier
        caches = TrainCache(*trunk, c_head, out.shape) if keep_caches else None
        return out, caches

    def _head_forward(self, x: np.ndarray, lengths: np.ndarray | None):
        """The config's head on the final hidden states x (B, T, C) (``minigpt/heads.py``)."""
        if self.cfg.num_classes is None:
            return heads.lm_head_forward(x, self.head_weight())                     # (B, T, V)
        p = self.params
        lora = None
        if "out_head.lora_A" in p:     # the book's replace_linear_with_lora wraps the head too
            lora = (p["out_head.lora_A"], p["out_head.lora_B"], self.cfg.lora_scale)
        return heads.classifier_forward(x, p["out_head.weight"], p["out_head.bias"],
                                        self.cfg.pooling, lengths, lora)            # (B, n)

    def forward(self, idx, *, rng: np.random.Generator | None = None,
                kv_cache: KVCache | None = None, lengths=None) -> np.ndarray:
        """idx (B, T) int -> the head's output: logits (B, T, V), or (B, num_classes) for a
        classification head (``lengths`` (B,): the real tokens per row, for its pooling).

        Dropout is active only when ``rng`` is given and ``drop_rate > 0`` (training); without it the
        forward is deterministic (evaluation, generation). With ``kv_cache`` (LM head only),
        ``idx`` holds only the new tokens, their positions continue from ``kv_cache.pos``, and the
        logits of the new positions are returned (see ``minigpt.inference.kv_cache``).
        """
        if kv_cache is not None:
            return self._forward_cached(idx, kv_cache)
        idx = self._check_idx(idx)
        lengths = self._check_lengths(lengths, idx)
        out, _ = self._forward(idx, rng, keep_caches=False, lengths=lengths)
        return out

    def forward_train(self, idx, *, rng: np.random.Generator | None = None, lengths=None):
        """The forward that keeps every layer's cache: ``(out, cache)`` for ``backward(dout, cache)``.

        ``out`` is the head's output, as ``forward`` returns it. Use it for a loss that is not
        ``loss_and_grads``'s cross-entropy: compute the loss and its gradient dL/dout from ``out``
        (DPO: log-probabilities of the chosen and rejected responses), then call ``backward``.
        """
        idx = self._check_idx(idx)
        lengths = self._check_lengths(lengths, idx)
        return self._forward(idx, rng, keep_caches=True, lengths=lengths)

    def _forward_cached(self, idx, cache: KVCache) -> np.ndarray:
        if self.cfg.num_classes is not None:
            raise ValueError("the KV cache serves generation, which needs the LM head; this model "
                             f"has a classification head (num_classes={self.cfg.num_classes}): call "
                             "forward(idx, lengths=...) on the whole sequences instead")
        cache.check_compatible(self.cfg, self.dtype)
        idx = self._check_idx(idx, t0=cache.pos)
        if idx.shape[0] != cache.batch_size:
            raise ValueError(f"idx has batch size {idx.shape[0]} but the KV cache was made for "
                             f"{cache.batch_size}; make a new KVCache(cfg, batch_size={idx.shape[0]})")
        if cache.pos + idx.shape[1] > cache.max_len:
            raise ValueError(f"KV cache full: {cache.pos} cached + {idx.shape[1]} new tokens exceed "
                             f"its max_len {cache.max_len}; call cache.reset() and re-feed the last "
                             "tokens")
        p, t0, ops = self.params, cache.pos, backend.ops()
        x, _ = ops.embedding_forward(idx, p["wte.weight"], p["wpe.weight"], t0)       # (B, T, C)
        fused = getattr(ops, "decode_step", None)     # the Numba path: the whole step, T = 1
        if fused is not None:                         # (kernels/decode.py); None: not applicable
            logits = fused(x, self._block_params, self.cfg.n_heads, cache, p["ln_f.weight"],
                           p["ln_f.bias"], self.head_weight(), self._decode_plan)
            if logits is not None:
                cache.pos += 1
                return logits                                                         # (B, 1, V)
        for i, bp in enumerate(self._block_params):
            x = block_step(x, bp, self.cfg.n_heads, cache.k[i], cache.v[i], t0)   # (B, T, C)
        x, _ = ops.layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        cache.pos += idx.shape[1]
        logits, _ = heads.lm_head_forward(x, self.head_weight())                      # (B, T, V)
        return logits

    # --- loss and backward ----------------------------------------------------------------------
    def _check_targets_for_head(self, targets, idx: np.ndarray) -> np.ndarray:
        if self.cfg.num_classes is None:
            return self._check_targets(targets, idx)      # (B, T) next-token ids or -100
        return self._check_labels(targets, idx)           # (B,) class ids or -100

    def loss(self, idx, targets, *, rng: np.random.Generator | None = None, lengths=None) -> float:
        """Mean cross-entropy over targets != -100, no backward. ``targets``: (B, T) token ids for
        the LM head, (B,) class ids for a classifier. Dropout only when ``rng`` is given (as in
        ``loss_and_grads``); evaluation leaves it out."""
        idx = self._check_idx(idx)
        targets = self._check_targets_for_head(targets, idx)
        lengths = self._check_lengths(lengths, idx)
        if self.cfg.num_classes is None:     # the LM head's logits in row chunks (heads.lm_head_loss)
            x, _ = self._trunk_forward(idx, rng, keep_caches=False)                # (B, T, C)
            loss, _ = heads.lm_head_loss(x, self.head_weight(), targets, grad=False,
                                         chunk_rows=self.loss_chunk_rows)
            return loss
        out, _ = self._forward(idx, rng, keep_caches=False, lengths=lengths)
        loss, _ = backend.ops().cross_entropy(out, targets, grad=False)
        return loss

    def loss_and_grads(self, idx, targets, *, rng: np.random.Generator | None = None, lengths=None):
        """Forward, loss, and the backward of every layer in reverse order, by hand.

        ``targets``: (B, T) next-token ids for the LM head, (B,) class ids for a classifier; -100
        leaves a position (a sequence) out of the mean. ``lengths`` (B,): a classifier's real
        tokens per row. Returns ``(loss, grads)``: the mean cross-entropy and ``self.grads``, the
        named views into ``flat_grads`` (overwritten by the next call; copy to keep them).
        With frozen parameters the chain stops below the lowest layer holding a trainable one
        (``_lowest_trainable_layer``): the gradients of the frozen blocks and embeddings under it
        are left at zero, uncomputed. Above it, a frozen linear weight's product dW = x^T dout is
        skipped (``minigpt/frozen.py``), and no frozen parameter's gradient is written: all of
        them stay zero, and the trainable ones are the same bits as with nothing frozen.
        """
        idx = self._check_idx(idx)
        targets = self._check_targets_for_head(targets, idx)
        if self.cfg.num_classes is None:
            # the LM head: its logits (B, T, V) are made, scored and differentiated a row chunk at a
            # time, its backward folded in (heads.lm_head_loss); the whole (B, T, V) never exists
            # the blocks' caches live in the gradient buffer until the backward gets there
            # (minigpt/stash.py), so it is zeroed first
            self._check_lengths(lengths, idx)
            self.zero_grad()
            stashes = self._stashes()
            try:
                x, trunk = self._trunk_forward(idx, rng, keep_caches=True,          # (B, T, C)
                                               stashes=stashes)
                loss, dx = heads.lm_head_loss(x, self.head_weight(), targets, self._head_grad(),
                                              chunk_rows=self.loss_chunk_rows)     # (B, T, C)
                del x
                return loss, self._trunk_backward(dx, TrainCache(*trunk, None, None),
                                                  release=True, stashes=stashes)
            finally:
                for s in stashes:          # whatever is left (frozen blocks below, an error)
                    if s is not None:
                        s.clear()
        out, cache = self.forward_train(idx, rng=rng, lengths=lengths)
        loss, dout = backend.ops().cross_entropy(out, targets, inplace=True)        # over out (eq. 7.3)
        del out
        # = self.backward(dout, cache), written out so that dout is freed before the blocks' backward
        self.zero_grad()
        dx = self._head_backward(dout, cache.head)                                  # (B, T, C)
        del dout
        return loss, self._trunk_backward(dx, cache)

    def backward(self, dout, cache: TrainCache) -> dict[str, np.ndarray]:
        """From dL/dout (the shape of ``forward_train``'s ``out``) to every parameter's gradient.

        Zeroes the gradient buffer, then runs the head's backward, ``ln_f``, the blocks in reverse
        and the embedding. Returns ``self.grads`` (views into ``flat_grads``). ``dout`` is cast to
        the model's dtype. The cache holds the activations of the parameters it was made with: after
        an optimizer step, run ``forward_train`` again.
        """
        dout = np.asarray(dout)
        if not np.issubdtype(dout.dtype, np.floating) or dout.shape != cache.out_shape:
            raise ValueError(f"dout must be a float array of the head's output shape "
                             f"{cache.out_shape} (dL/dout), got {dout.dtype} {dout.shape}")
        self.zero_grad()
        dx = self._head_backward(dout.astype(self.dtype, copy=False), cache.head)   # (B, T, C)
        return self._trunk_backward(dx, cache)

    def _head_backward(self, dout: np.ndarray, c_head) -> np.ndarray:
        """dout: (B, T, V) logits gradient, or (B, n) for a classifier -> dx (B, T, C)."""
        # a frozen head weight's gradient (None in _top_g) is skipped: dx only (minigpt/frozen.py)
        if self.cfg.num_classes is None:
            # logits = x @ W_head^T: the gradient of W_head^T lands in dhead^T, a view (eq. 9.1).
            # When tied, dhead IS wte's gradient, so it holds the sum of both uses (eq. 9.2).
            return heads.lm_head_backward(dout, c_head, self._head_grad())          # (B, T, V) -> (B, T, C)
        g = self._top_g
        return heads.classifier_backward(dout, c_head, g["out_head.weight"], g["out_head.bias"],
                                         g.get("out_head.lora_A"), g.get("out_head.lora_B"))

    def _stashes(self) -> list:
        """Per block i, a ``Stash`` over block i - 1's gradient slab (zeroed: call after
        ``zero_grad``), where block i's cache keeps its arrays; None for block 0 and for a
        block whose slab is not one run of the buffer (``minigpt/stash.py``)."""
        if self._slabs is None:
            self._slabs = block_slabs(self.ranges, self.cfg.n_layers)
        below = [None, *self._slabs[:-1]]
        return [Stash(self.flat_grads[r[0]:r[1]]) if r is not None else None for r in below]

    def _trunk_backward(self, dx: np.ndarray, cache: TrainCache, release: bool = False,
                        stashes: list | None = None) -> dict[str, np.ndarray]:
        """dx (B, T, C) at ln_f's output -> ln_f, the blocks in reverse, the embedding; fills grads.
        ``release``: drop each block's cache from ``cache.blocks`` once its backward is done (the
        cache is the caller's own and will not be used again), so the activations shrink as the
        backward goes down. ``stashes``: the forward's (``_stashes``); each block's is zeroed
        once its backward is done, before the block below adds its gradients there."""
        ops, g = backend.ops(), self._top_g
        dx = ops.layernorm_backward(dx, cache.lnf, g["ln_f.weight"], g["ln_f.bias"])  # (B, T, C)
        # frozen parameters: nothing below the lowest trainable layer needs a gradient, so the
        # backward stops there; above it, the frozen weights' products are skipped (_active_grads).
        # Every frozen parameter's gradient stays zero.
        floor = self._grad_floor
        for i in reversed(range(max(floor, 0), len(cache.blocks))):
            dx = block_backward(dx, cache.blocks[i], self._blocks_g[i])        # (B, T, C)
            if release:
                cache.blocks[i] = None
            if stashes and stashes[i] is not None:
                stashes[i].clear()
        if floor < 0:
            dx = ops.dropout_backward(dx, cache.drop)
            dwte, dwpe = (g[n] if g[n] is not None else np.zeros_like(self.grads[n])
                          for n in ("wte.weight", "wpe.weight"))   # a frozen one: a scratch array
            ops.embedding_backward(dx, cache.emb, dwte, dwpe)
        return self.grads

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, by name."""
        return {name: arr.copy() for name, arr in self.params.items()}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters by name, checking shapes (and, when strict, that the names
        are exactly the model's). Values are cast to the model's dtype."""
        missing = [n for n in self.params if n not in state]
        unexpected = [n for n in state if n not in self.params]
        if strict and (missing or unexpected):
            raise ValueError(f"state does not match the model: missing {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                             f"{' ...' if len(unexpected) > 10 else ''}")
        for name, arr in state.items():
            if name not in self.params:
                continue
            arr = np.asarray(arr)
            if arr.shape != self.params[name].shape:
                raise ValueError(f"{name}: shape {arr.shape} in the state, {self.params[name].shape} "
                                 "in the model; the configs differ")
            self.params[name][...] = arr

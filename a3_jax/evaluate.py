"""Exact likelihood of texts under groupings, one teacher-forced pass per window.

For a grouping G_1..G_K of a window, one pass of the query stream gives every
factor of log p(x) = sum_k sum_{i in G_k} log p(x_i | x_{G<k}) (docs/design.md §1).
A long text is cut into windows of `window` tokens; each window after the first
may carry `context` tokens of the previous one, which are conditioned on (in
causal order, groups 0..c-1) but not scored, so every scored token belongs to
exactly one window. The scored tokens of a window are grouped by the strategy,
their group ids following the context's.

  head='query'    the A3 likelihood: every scored token, the first group of a
                  text predicted from nothing (that is part of log p(x)).
  head='content'  the causal LM on the content stream: grouping must be `ar`,
                  the logits at i-1 predict x_i, so a text's first token is not
                  scored (there is nothing to predict it from).

`perm:k` is averaged over `orders` random orders (each text window gets its own
order per draw, from (seed, order, text, window)); the spread over orders says
how much the model's factorisations disagree.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np

from a3_jax.config import ModelConfig
from a3_jax.grouping import Strategy, parse_strategy, sample_groups
from a3_jax.errors import UserError
from a3_jax.teacher_forced import Item, check_head, score_items

CURVE_SIZES = (1, 2, 4, 8, 16)


def text_windows(num_tokens: int, window: int, context: int) -> list[tuple[int, int, int]]:
  """(start, stop, n_context) of each window of a text of num_tokens tokens.

  Windows hold at most `window` tokens; every window after the first starts
  `context` tokens before the end of the previous one.
  """
  if window < 1:
    raise UserError(f"window must be >= 1, got {window}")
  if not 0 <= context < window:
    raise UserError(f"context must be in [0, window={window}), got {context}")
  out, stop = [], 0
  while stop < num_tokens:
    start = max(stop - context, 0)
    out.append((start, min(start + window, num_tokens), stop - start))
    stop = out[-1][1]
  return out


_sample_groups = jax.jit(sample_groups, static_argnums=0)  # one program per window length


def window_groups(strategy: Strategy, key, n_context: int, length: int) -> np.ndarray:
  """Group ids [length]: context 0..c-1 in order, then the scored tokens grouped by strategy."""
  n_new = length - n_context
  seg = np.ones((1, n_new), np.int32)
  pos = np.arange(n_new, dtype=np.int32)[None]
  new = np.asarray(_sample_groups(strategy, key, seg, pos))[0]
  return np.concatenate([np.arange(n_context, dtype=np.int32), n_context + new]).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class GroupingResult:
  """NLL of a set of texts under one grouping.

  nll_per_order [O]: summed NLL (nats) of all scored tokens, one per order
  (O = 1 for deterministic groupings); logp_per_text [O, D]: log p of each text.
  """

  grouping: str
  head: str
  tokens: int
  nll_per_order: np.ndarray
  logp_per_text: np.ndarray

  @property
  def nll_per_token(self) -> float:
    return float(np.mean(self.nll_per_order)) / self.tokens

  @property
  def order_std(self) -> float:
    """Standard deviation over orders of the NLL per token (0 for one order)."""
    return float(np.std(self.nll_per_order / self.tokens))

  @property
  def mixture_nll_per_token(self) -> float:
    """NLL per token of the uniform mixture over the orders drawn: each text's
    -log mean_o p_o(x), an exact likelihood too, and <= the mean over orders."""
    lp = self.logp_per_text
    top = lp.max(axis=0)
    mix = top + np.log(np.mean(np.exp(lp - top), axis=0))
    return -float(np.sum(mix)) / self.tokens

  def to_dict(self) -> dict:
    nll = self.nll_per_order / self.tokens
    return {"grouping": self.grouping, "head": self.head, "tokens": self.tokens,
            "orders": len(self.nll_per_order), "nll_per_token": self.nll_per_token,
            "perplexity": math.exp(self.nll_per_token), "order_std": self.order_std,
            "order_min": float(np.min(nll)), "order_max": float(np.max(nll)),
            "mixture_nll_per_token": self.mixture_nll_per_token}


def _rows(texts: Sequence[np.ndarray], strategy: Strategy, head: str, orders: int,
          window: int, context: int, seed: int):
  """(tokens, groups, scored [n] each; text index, order index) of every window pass."""
  base = jax.random.key(seed)
  for d, ids in enumerate(texts):
    for w, (start, stop, n_ctx) in enumerate(text_windows(len(ids), window, context)):
      n = stop - start
      scored = np.arange(n) >= n_ctx
      if head == "content":
        scored &= np.arange(n) >= 1
      for o in range(orders):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, o), d), w)
        groups = window_groups(strategy, key, n_ctx, n)
        yield ids[start:stop], groups, scored, d, o


def check_grouping(name: str, head: str):
  """The Strategy of a grouping that `head` can score exactly (ValueError otherwise)."""
  strategy = parse_strategy(name)
  if strategy.kind == "mix":
    raise UserError(f"grouping {name!r}: a mixture draws a strategy at random; "
                     "evaluate its parts separately")
  if head == "content" and strategy.kind != "ar":
    raise UserError(f"--head=content scores the causal LM, which needs grouping 'ar', "
                     f"got {name!r}")
  return strategy


def score_texts(params, config: ModelConfig, texts: Sequence[Sequence[int]], grouping: str,
                *, head: str = "query", orders: int = 1, window: int | None = None,
                context: int = 0, seed: int = 0, batch_size: int = 8,
                progress=None) -> GroupingResult:
  """Exact NLL of token-id texts under one grouping ('ar', 'block:k', 'perm:k').

  Windows default to the model's max_seq_len; they are scored `batch_size` to a
  pass by teacher_forced.score_items. `progress(done, total)`, if given, is called
  about every 10 % of the windows.
  """
  check_head(head)
  strategy = check_grouping(grouping, head)
  if orders < 1:
    raise UserError(f"orders must be >= 1, got {orders}")
  texts = [np.asarray(t, np.int32) for t in texts]
  if not texts:
    raise UserError("no texts to score")
  window = min(window or config.max_seq_len, config.max_seq_len)
  need = 2 if head == "content" else 1
  for d, ids in enumerate(texts):
    if len(ids) < need:
      raise UserError(f"text {d} has {len(ids)} tokens; head={head!r} needs at least {need}")
  orders = orders if strategy.kind == "perm" else 1
  rows = list(_rows(texts, strategy, head, orders, window, context, seed))
  scores = score_items(params, config, [Item(ids, groups, None, scored)
                                        for ids, groups, scored, _, _ in rows],
                       head=head, batch_size=batch_size, progress=progress)
  logp = np.zeros((orders, len(texts)))
  for (_, _, _, d, o), (lp, _) in zip(rows, scores):
    logp[o, d] += lp.sum()
  tokens = sum(int(scored.sum()) for _, _, scored, _, o in rows if o == 0)
  nll_per_order = -logp.sum(axis=1)
  return GroupingResult(strategy.name, head, tokens, nll_per_order, logp)


def parallelism_curve(params, config: ModelConfig, texts: Sequence[Sequence[int]], *,
                      sizes: Sequence[int] = CURVE_SIZES, orders: int = 4, progress=None,
                      **kwargs) -> list[GroupingResult]:
  """NLL per token under block:k and perm:k for each group size k (the price of
  generating k tokens per pass). `progress(grouping)`, if given, makes each grouping's
  score_texts progress callback."""
  names = [f"{kind}:{k}" for kind in ("block", "perm") for k in sizes]
  return [score_texts(params, config, texts, g, orders=orders,
                      progress=None if progress is None else progress(g), **kwargs)
          for g in names]


def curve_table(results: Sequence[GroupingResult]) -> str:
  """A text table: group size x (block, perm) NLL per token (perm: mean ± std over orders)."""
  by = {(r.grouping.split(":")[0], int(r.grouping.split(":")[1])): r for r in results}
  sizes = sorted({k for _, k in by})
  lines = [f"{'group size':>10}  {'block nll/tok':>13}  {'perm nll/tok':>20}",
           f"{'-' * 10}  {'-' * 13}  {'-' * 20}"]
  for k in sizes:
    block, perm = by.get(("block", k)), by.get(("perm", k))
    b = f"{block.nll_per_token:13.4f}" if block else f"{'-':>13}"
    p = (f"{perm.nll_per_token:11.4f} ± {perm.order_std:6.4f}" if perm else f"{'-':>20}")
    lines.append(f"{k:>10}  {b}  {p}")
  return "\n".join(lines)


def plot_curve(results: Sequence[GroupingResult], path: str, title: str = "") -> str:
  """PNG of NLL per token against group size, block and perm (perm with ±1 std over orders)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for kind, marker in (("block", "o"), ("perm", "s")):
    rows = sorted((int(r.grouping.split(":")[1]), r) for r in results
                  if r.grouping.startswith(kind + ":"))
    if rows:
      ax.errorbar([k for k, _ in rows], [r.nll_per_token for _, r in rows],
                  yerr=[r.order_std for _, r in rows], marker=marker, capsize=3,
                  label=f"{kind}:k")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("group size k (tokens per pass)")
  ax.set_ylabel("exact NLL per token (nats)")
  ax.set_title(title or "parallelism vs likelihood")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path

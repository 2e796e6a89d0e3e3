"""A likelihood evaluation of a text file as one report: exact NLL per grouping (or an
MDM's NELBO), optionally the parallelism-likelihood curve; and its text rendering."""

from __future__ import annotations

import os

from a3_jax import evaluate
from a3_jax.data.text_file import encode_texts


def likelihood_report(params, config, tokenizer, texts: list[str], names: list[str], *,
                      checkpoint: str, text_file: str, head: str = "query", orders: int = 4,
                      window: int = 1024, context: int = 0, batch_size: int = 8, seed: int = 0,
                      elbo_samples: int = 16, mask_id: int = 0,
                      curve_png: str | None = None) -> dict:
  """Exact NLL of `texts` under each grouping in `names` (head 'query' or 'content'),
  or the MDM NELBO (head 'mdm'); with `curve_png`, also the parallelism curve drawn
  there. One JSON-able dict; `format_likelihood` renders it."""
  ids = encode_texts(tokenizer, texts, text_file, 2 if head == "content" else 1)
  common = dict(window=window, context=context, seed=seed)
  if head == "mdm":
    from a3_jax import mdm
    results = [mdm.nelbo_texts(params, config, ids, num_samples=elbo_samples,
                               mask_id=mask_id, **common)]
  else:
    results = [evaluate.score_texts(params, config, ids, g, head=head, orders=orders,
                                    batch_size=batch_size, **common).to_dict()
               for g in names]
  out = {"checkpoint": checkpoint, "text_file": text_file, "head": head,
         "documents": len(ids), "results": results}
  if curve_png:
    curve = evaluate.parallelism_curve(params, config, ids, orders=orders,
                                       batch_size=batch_size, **common)
    out["curve"] = [r.to_dict() for r in curve]
    out["curve_table"] = evaluate.curve_table(curve)
    out["curve_png"] = evaluate.plot_curve(curve, curve_png,
                                           os.path.basename(checkpoint.rstrip("/")))
  return out


def format_likelihood(out: dict) -> str:
  lines = [f"{out['checkpoint']} on {out['text_file']} ({out['documents']} document(s)), "
           f"head={out['head']}"]
  if out["head"] == "mdm":
    r = out["results"][0]
    lines.append(f"NELBO/token {r['nelbo_per_token']:.4f} ± {r['stderr_per_token']:.4f} "
                 f"(perplexity <= {r['perplexity_bound']:.2f}; {r['samples']} samples, "
                 f"{r['tokens']} tokens)")
    return "\n".join(lines)
  lines.append(f"{'grouping':<10} {'nll/token':>10} {'perplexity':>11} {'tokens':>8} "
               f"{'orders':>6} {'order std':>9}")
  for r in out["results"]:
    lines.append(f"{r['grouping']:<10} {r['nll_per_token']:>10.4f} {r['perplexity']:>11.2f} "
                 f"{r['tokens']:>8} {r['orders']:>6} {r['order_std']:>9.4f}")
  if "curve" in out:
    lines += ["", "parallelism-likelihood curve:", out["curve_table"], f"plot: {out['curve_png']}"]
  return "\n".join(lines)

"""A likelihood evaluation of a text file as one report: exact NLL per grouping (or an
MDM's NELBO), optionally the parallelism-likelihood curve; and its text rendering."""

from __future__ import annotations

import os

from a3_jax import evaluate, rundir
from a3_jax.data.text_file import encode_texts
from a3_jax.errors import UserError
from a3_jax.export import is_export, run_flags
from a3_jax.progress import Progress


def window_and_context(checkpoint: str, config, window: int | None = None,
                       context: int | None = None) -> tuple[int, int]:
  """(window, context) of a likelihood evaluation: by default the training seq_len saved
  with an export (1024 where none) and half the window; the window is capped at the
  model's max_seq_len."""
  trained = run_flags(checkpoint).get("seq_len") if is_export(checkpoint) else None
  window = min(window or trained or 1024, config.max_seq_len)
  context = window // 2 if context is None else context
  if not 0 <= context < window:
    raise UserError(f"--context={context} must be in [0, window={window})")
  return window, context


def curve_path(checkpoint: str, path: str | None = None) -> str:
  """Where the parallelism-curve PNG goes: `path` where given (its folder must exist),
  else beside the model it describes (an export's parallelism_curve.png), else (an
  'hf:'/'gguf:' checkpoint) parallelism_curve.png in the current directory."""
  if path is None:
    path = os.path.join(checkpoint if is_export(checkpoint) else ".", "parallelism_curve.png")
  elif not path.lower().endswith(".png"):
    raise UserError(f"--curve_png={path} must name a .png file")
  rundir.check_out_file(path, "--curve_png")  # before any work toward it
  return path


def trained_mdm_shift(checkpoint: str, override: bool | None = None) -> bool:
  """Whether an MDM was adapted with the DiffuLLaMA shift: `override` where given, else
  the training flags saved with an export (False where none, e.g. hf:/gguf: models)."""
  if override is not None:
    return override
  trained = run_flags(checkpoint).get("train", {}) if is_export(checkpoint) else {}
  return bool(trained.get("mdm_shift", False))


def likelihood_report(params, config, tokenizer, texts: list[str], names: list[str], *,
                      checkpoint: str, text_file: str, head: str = "query", orders: int = 4,
                      window: int = 1024, context: int = 0, batch_size: int = 8, seed: int = 0,
                      elbo_samples: int = 16, mask_id: int = 0, mdm_shift: bool = False,
                      curve_png: str | None = None, progress=None) -> dict:
  """Exact NLL of `texts` under each grouping in `names` (head 'query' or 'content'),
  per token and (head 'query', which scores every token) per character, or the MDM
  NELBO (head 'mdm'; mdm_shift: of a model adapted with the DiffuLLaMA shift); with
  `curve_png`, also the parallelism curve drawn there. One JSON-able dict;
  `format_likelihood` renders it. `progress(message)` hears how far each grouping has got."""
  ids = encode_texts(tokenizer, texts, text_file, 2 if head == "content" else 1)

  def windows(name, every=0.0):  # score_texts paces its own reports (~10 %)
    return None if progress is None else Progress(f"  {name}", progress, unit="windows",
                                                  every=every)

  common = dict(window=window, context=context, seed=seed)
  if progress is not None:
    progress(f"{len(ids)} document(s), {sum(map(len, ids)):,} tokens; window {window}, "
             f"context {context}")
  if head == "mdm":
    from a3_jax import mdm
    results = [mdm.nelbo_texts(params, config, ids, num_samples=elbo_samples,
                               mask_id=mask_id, shift=mdm_shift,
                               progress=windows("mdm-elbo", 0.1), **common)]
  else:
    results = []
    for g in names:
      results.append(evaluate.score_texts(params, config, ids, g, head=head, orders=orders,
                                          batch_size=batch_size, progress=windows(g),
                                          **common).to_dict())
    chars = sum(len(t) for t in texts)
    for r in results if head == "query" else ():
      r["nll_per_char"] = r["nll_per_token"] * r["tokens"] / chars
  out = {"checkpoint": checkpoint, "text_file": text_file, "head": head,
         **({"mdm_shift": mdm_shift} if head == "mdm" else {}), "documents": len(ids),
         "window": window, "context": context, "results": results}
  if curve_png:
    curve = evaluate.parallelism_curve(params, config, ids, orders=orders,
                                       batch_size=batch_size, progress=windows, **common)
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
  lines.append(f"{'grouping':<10} {'nll/token':>10} {'nll/char':>9} {'perplexity':>11} "
               f"{'tokens':>8} {'orders':>6} {'order std':>9}")
  for r in out["results"]:
    per_char = f"{r['nll_per_char']:>9.4f}" if "nll_per_char" in r else f"{'-':>9}"
    lines.append(f"{r['grouping']:<10} {r['nll_per_token']:>10.4f} {per_char} "
                 f"{r['perplexity']:>11.2f} {r['tokens']:>8} {r['orders']:>6} "
                 f"{r['order_std']:>9.4f}")
  if "curve" in out:
    lines += ["", "parallelism-likelihood curve:", out["curve_table"], f"plot: {out['curve_png']}"]
  return "\n".join(lines)

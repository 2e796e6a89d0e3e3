"""The Python API: a loaded checkpoint that generates, infills and scores text.

    import a3_jax
    model = a3_jax.load("exports/default")       # an export, hf:DIR or gguf:FILE
    model.generate("ROMEO.", max_new_tokens=32)  # continue
    model.generate("To be, or <blank:4> to be")  # infill
    model.score(["To be, or not to be"])         # exact NLL per token and per character
    model.conditional(["{{To be, or}} [[not]] {{to be}}"])  # log p(target | condition)

Every method is a thin layer over the library functions the console scripts use
(decoding.samples, likelihood_report, marked), so it answers as a3-generate and
a3-eval do.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

from a3_jax.config import ModelConfig
from a3_jax.decoding.sampling import SamplerConfig


@dataclasses.dataclass
class Model:
  """A checkpoint's params, config and tokenizer (see `load`)."""

  params: Any
  config: ModelConfig
  tokenizer: Any
  checkpoint: str
  untrained_query: str | None = None  # why the query stream was never trained, if it wasn't

  def generate(self, prompt: str, max_new_tokens: int = 0, *, head: str = "query",
               num_samples: int = 1, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0, **options) -> list[dict]:
    """Samples of `prompt`: `<blank:N>` marks N tokens to fill anywhere (infilling),
    `<blank:MIN-MAX>` a blank of unknown length, and `max_new_tokens` more follow the
    prompt (a continuation stops at EOS). head='query' decodes with A3 (options:
    decoder='group'|'dynamic'|'speculative', group_size, order, criterion,
    commit_per_step, threshold, block_size, draft_size, form, length_prior, as the
    a3-generate flags); head='content' samples the causal LM left to right.
    temperature 0 is greedy. Returns one dict per sample: 'text', 'logprob' (exact, of
    the generated tokens), 'tokens', 'groups' (the step that committed each token),
    'steps'."""
    from a3_jax.decoding.samples import sample_prompt
    if head == "query" and self.untrained_query:
      warnings.warn(f"{self.untrained_query}: its query stream was never trained; "
                    "head='content' samples the causal LM", stacklevel=2)
    return sample_prompt(self.params, self.config, self.tokenizer, prompt, max_new_tokens,
                         head=head, num_samples=num_samples, seed=seed,
                         sampler=SamplerConfig(temperature, top_k, top_p), **options)

  def score(self, texts: Sequence[str], groupings: Sequence[str] = ("ar",), *,
            head: str = "query", orders: int = 4, window: int | None = None,
            context: int | None = None, batch_size: int = 8) -> dict:
    """Exact negative log-likelihood of `texts` under each grouping ('ar', 'block:K',
    'perm:K'; head='content': the causal LM, 'ar' only), as a3-eval --text_file reports
    it: a dict whose 'results' hold one entry per grouping with 'nll_per_token',
    'nll_per_char' (head='query'), 'perplexity' and 'tokens'. Texts longer than the
    window are scored in windows that carry `context` tokens of the one before."""
    from a3_jax.likelihood_report import likelihood_report, window_and_context
    window, context = window_and_context(self.checkpoint, self.config, window, context)
    return likelihood_report(self.params, self.config, self.tokenizer, list(texts),
                             list(groupings), checkpoint=self.checkpoint, text_file="<texts>",
                             head=head, orders=orders, window=window, context=context,
                             batch_size=batch_size)

  def conditional(self, marked_texts: Sequence[str], grouping: str = "ar", *,
                  unmarked: str = "absent") -> list[dict]:
    """log p(target | condition) of each marked text: `[[...]]` is the target, `{{...}}`
    the condition, other text is absent (or, unmarked='condition', given); the target's
    tokens are predicted in `grouping` ('ar', 'one', 'spans', 'block:K', 'perm:K'). One
    dict per text with 'logp', 'nll_per_target_token', 'greedy' and per-token 'targets'."""
    from a3_jax.marked import score_marked
    return score_marked(self.params, self.config, self.tokenizer, list(marked_texts),
                        grouping=grouping, unmarked=unmarked)


def load(checkpoint: str, tokenizer: str | None = None) -> Model:
  """The model at `checkpoint`: an a3-export directory, 'hf:DIR' or 'gguf:FILE';
  `tokenizer` replaces its own (a sentencepiece .model or a tokenizer.json)."""
  from a3_jax.convert.loader import load_model
  from a3_jax.history import untrained_query_stream
  params, config, tok = load_model(checkpoint, tokenizer)
  return Model(params, config, tok, checkpoint, untrained_query_stream(checkpoint))

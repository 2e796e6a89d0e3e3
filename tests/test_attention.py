"""The visibility rule and the agreement of every attention path with einsum."""

import chex
import flax.linen as nn
from flax.linen import meta
import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a3_jax import attention
from a3_jax.attention.einsum import einsum_attention
from a3_jax.attention.chunked import chunked_attention
from a3_jax.attention.kernel import block_aligned, generation_order, two_stream_attention
from a3_jax.config import get_preset
from a3_jax.grouping import parse_strategy, sample_groups
from a3_jax.model import A3LM, init_params

N, K, H = 4, 2, 8
TOL = dict(atol=1e-5, rtol=1e-5)


def doc_groups(rng, length: int, strategy: str, k: int = 3):
  """Group ids of one document of `length` tokens."""
  if strategy == "ar":
    return np.arange(length)
  if strategy == "block":
    return np.arange(length) // k
  if strategy == "perm":
    return rng.permutation(length) // k
  if strategy == "ties":  # arbitrary, unsorted, non-contiguous ids with ties
    return rng.choice([0, 2, 3, 7], size=length)
  raise ValueError(strategy)


def packed_rows(rng, b: int, t: int, strategy: str, *, k: int = 3, doc_multiple: int = 1,
                empty_row: bool = False):
  """group, seg [B, T]: each row packs several documents, then padding (segment 0).

  Padding tokens get random group ids (they must be invisible whatever their
  group). With empty_row the last row is all padding.
  """
  group = rng.integers(-3, 9, size=(b, t))
  seg = np.zeros((b, t), np.int64)
  for i in range(b - 1 if empty_row else b):
    pos, s = 0, 1
    while True:
      length = doc_multiple * int(rng.integers(1, 12 // doc_multiple + 2))
      if pos + length > t - 2:  # leave at least two padding tokens
        break
      group[i, pos:pos + length] = doc_groups(rng, length, strategy, k)
      seg[i, pos:pos + length] = s
      pos, s = pos + length, s + 1
  return jnp.asarray(group, jnp.int32), jnp.asarray(seg, jnp.int32)


def qkv(rng, b: int, r: int, s: int):
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return normal(b, r, N, H), normal(b, s, K, H), normal(b, s, K, H)


def two_stream_rows(group, seg):
  """Row integers of [content rows; query rows] against the same keys."""
  return jnp.concatenate([group, group - 1], 1), jnp.concatenate([seg, seg], 1)


def value_and_grads(fn, q, k, v, rng):
  """Output and d(sum(out * w))/d(q, k, v) for a fixed random w."""
  w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  loss = lambda q, k, v: jnp.sum(fn(q, k, v) * w)
  return jax.jit(fn)(q, k, v), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def assert_same_path(fn, ref, q, k, v, seed=0):
  out, grads = value_and_grads(fn, q, k, v, np.random.default_rng(seed))
  out_ref, grads_ref = value_and_grads(ref, q, k, v, np.random.default_rng(seed))
  chex.assert_trees_all_close({"out": out, "d/dq": grads[0], "d/dk": grads[1], "d/dv": grads[2]},
                              {"out": out_ref, "d/dq": grads_ref[0], "d/dk": grads_ref[1],
                               "d/dv": grads_ref[2]}, **TOL)


# --- the rule itself -------------------------------------------------------------

def _int_arrays(shape, low, high):
  return hnp.arrays(np.int32, shape, elements=st.integers(low, high))


_visibility = jax.jit(attention.visibility)


@st.composite
def _rule_inputs(draw):
  """(row_limit, row_seg [B, R], key_group, key_seg [B, S]): small ids, with ties,
  negative limits and padding (segment 0). Shapes come from a few (one compile each)."""
  b, r, s = draw(st.sampled_from([(2, 9, 11), (1, 1, 5)]))
  return (draw(_int_arrays((b, r), -2, 4)), draw(_int_arrays((b, r), 0, 2)),
          draw(_int_arrays((b, s), -2, 4)), draw(_int_arrays((b, s), 0, 2)))


@hypothesis.settings(max_examples=40)
@hypothesis.given(_rule_inputs())
def test_visibility_matches_definition(inputs):
  limit, rseg, group, kseg = inputs
  got = np.asarray(_visibility(*inputs))
  chex.assert_shape(got, (*limit.shape, group.shape[1]))
  chex.assert_type(got, bool)
  b, r = limit.shape
  for i in range(b):
    for x in range(r):
      for y in range(group.shape[1]):
        want = group[i, y] <= limit[i, x] and kseg[i, y] == rseg[i, x] and kseg[i, y] != 0
        assert got[i, x, y] == want, (i, x, y)


# --- chunked ---------------------------------------------------------------------

@pytest.mark.parametrize("strategy,chunk", [("ar", 16), ("block", 7), ("perm", 16),
                                            ("perm", 5), ("perm", 128), ("ties", 16)])
def test_chunked_matches_einsum_two_streams(strategy, chunk):
  rng = np.random.default_rng(1)
  t = 45  # 2T = 90 rows: not a multiple of the chunk
  group, seg = packed_rows(rng, 3, t, strategy, empty_row=True)
  limit, rseg = two_stream_rows(group, seg)
  q, k, v = qkv(rng, 3, 2 * t, t)
  fn = lambda q, k, v: chunked_attention(q, k, v, limit, rseg, group, seg, chunk=chunk)
  ref = lambda q, k, v: einsum_attention(q, k, v, limit, rseg, group, seg)
  assert_same_path(fn, ref, q, k, v)


def test_chunked_matches_einsum_arbitrary_rows_and_keys():
  """Decode-like shapes: R rows unrelated to S keys (a cache plus new content)."""
  rng = np.random.default_rng(2)
  b, r, s = 2, 13, 29
  limit, rseg = (jnp.asarray(rng.integers(-1, 6, (b, r)), jnp.int32),
                 jnp.asarray(rng.integers(0, 3, (b, r)), jnp.int32))
  group, kseg = (jnp.asarray(rng.integers(0, 6, (b, s)), jnp.int32),
                 jnp.asarray(rng.integers(0, 3, (b, s)), jnp.int32))
  q, k, v = qkv(rng, b, r, s)
  fn = lambda q, k, v: attention.attend("chunked", q, k, v, limit, rseg, group, kseg, chunk=8)
  ref = lambda q, k, v: attention.attend("einsum", q, k, v, limit, rseg, group, kseg)
  assert_same_path(fn, ref, q, k, v)


def test_rows_without_keys_are_zero_with_finite_gradients():
  rng = np.random.default_rng(3)
  t = 20
  group, seg = packed_rows(rng, 2, t, "block", empty_row=True)
  limit, rseg = two_stream_rows(group, seg)
  q, k, v = qkv(rng, 2, 2 * t, t)
  empty = ~np.asarray(attention.visibility(limit, rseg, group, seg)).any(-1)
  assert empty[0].any() and empty[1].all()  # first-group query rows; an all-padding row
  for fn in (lambda q, k, v: chunked_attention(q, k, v, limit, rseg, group, seg, chunk=8),
             lambda q, k, v: einsum_attention(q, k, v, limit, rseg, group, seg)):
    out, grads = value_and_grads(fn, q, k, v, rng)
    assert np.all(np.asarray(out)[empty] == 0)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_chunked_rejects_bad_chunk():
  rng = np.random.default_rng(0)
  q, k, v = qkv(rng, 1, 4, 4)
  ids = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="chunk"):
    chunked_attention(q, k, v, ids, ids, ids, ids, chunk=0)


def _largest_intermediate(jaxpr) -> int:
  """Elements of the largest value any equation produces, sub-jaxprs included."""
  def subjaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
      yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
      yield value
    elif isinstance(value, (tuple, list)):
      for item in value:
        yield from subjaxprs(item)

  biggest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()))))
    for value in eqn.params.values():
      for sub in subjaxprs(value):
        biggest = max(biggest, _largest_intermediate(sub))
  return biggest


def test_chunked_gradient_inside_layer_scan_never_builds_rows_by_keys():
  """Under grad of a scan over layers nothing of size R * S appears (no hoisted masks)."""
  t, layers = 256, 2
  group = jnp.asarray(np.random.default_rng(0).permutation(t) // 4, jnp.int32)[None]
  seg = jnp.ones((1, t), jnp.int32)
  limit, rseg = two_stream_rows(group, seg)

  def loss(q, k, v):
    def layer(scale, _):
      out = chunked_attention(q * scale, k * scale, v * scale, limit, rseg, group, seg,
                              chunk=32)
      return scale + jnp.mean(out), None
    return jax.lax.scan(layer, 1.0, None, length=layers)[0]

  q, k, v = qkv(np.random.default_rng(0), 1, 2 * t, t)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v).jaxpr
  assert _largest_intermediate(jaxpr) < 2 * t * t


# --- the full model --------------------------------------------------------------

def test_model_chunked_matches_einsum_logits_and_gradients():
  cfg = get_preset("tiny")
  rng = np.random.default_rng(4)
  b, t = 2, 24
  group, seg = packed_rows(rng, b, t, "perm")
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32)
  params = nn.meta.unbox(init_params(cfg, jax.random.key(0)))

  def run(impl):
    model = A3LM(cfg.replace(attention=impl, attention_chunk=16))

    def loss(params):
      out = model.apply(params, tokens, group, seg)
      return jnp.sum(out["query"] ** 2) + jnp.sum(out["content"] ** 2), out
    return jax.jit(jax.grad(loss, has_aux=True))(params)

  grads, out = run("chunked")
  grads_ref, out_ref = run("einsum")
  for stream in ("query", "content"):
    np.testing.assert_allclose(out[stream], out_ref[stream], **TOL)
  flat, flat_ref = jax.tree.leaves(grads), jax.tree.leaves(grads_ref)
  for g, g_ref in zip(flat, flat_ref):
    scale = float(jnp.max(jnp.abs(g_ref))) or 1.0
    np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(g_ref) / scale, atol=1e-5)


# --- generation-order kernel path ------------------------------------------------

def _kernel_case(strategy, k, seed=5, t=40):
  rng = np.random.default_rng(seed)
  group, seg = packed_rows(rng, 2, t, strategy, k=k, doc_multiple=k)
  assert bool(jnp.all(block_aligned(group, seg, k)))
  return rng, group, seg


@pytest.mark.parametrize("strategy,k", [("ar", 1), ("block", 2), ("perm", 4)])
@pytest.mark.parametrize("streams", [1, 2])
def test_kernel_xla_matches_einsum(strategy, k, streams):
  t = 40
  rng, group, seg = _kernel_case(strategy, k, t=t)
  limit, rseg = two_stream_rows(group, seg)
  limit, rseg = limit[:, :streams * t], rseg[:, :streams * t]
  q, kk, v = qkv(rng, 2, streams * t, t)
  fn = lambda q, k_, v: two_stream_attention(q, k_, v, group, seg, group_size=k,
                                             backend="xla")
  ref = lambda q, k_, v: einsum_attention(q, k_, v, limit, rseg, group, seg)
  assert_same_path(fn, ref, q, kk, v)


def test_kernel_splash_interpret_matches_einsum():
  """The TPU splash kernel, run by the Pallas interpreter on CPU (~10 s)."""
  t, k = 100, 4  # T padded to 128 slots inside
  rng, group, seg = _kernel_case("perm", k, seed=6, t=t)
  limit, rseg = two_stream_rows(group, seg)
  q, kk, v = qkv(rng, 2, 2 * t, t)
  fn = lambda q, k_, v: two_stream_attention(q, k_, v, group, seg, group_size=k,
                                             backend="splash", interpret=True)
  ref = lambda q, k_, v: einsum_attention(q, k_, v, limit, rseg, group, seg)
  assert_same_path(fn, ref, q, kk, v)


def test_kernel_splash_under_a_mesh_runs_per_device_and_matches_einsum():
  """Under a mesh, splash runs inside shard_map (rows over data x fsdp, kv heads over
  tensor; Mosaic kernels cannot be auto-partitioned): same outputs and gradients."""
  from a3_jax import sharding as shd
  t, k = 64, 4
  rng = np.random.default_rng(9)
  group, seg = packed_rows(rng, 4, t, "perm", k=k, doc_multiple=k)
  limit, rseg = two_stream_rows(group, seg)
  q, kk, v = qkv(rng, 4, 2 * t, t)
  fn = lambda q, k_, v: two_stream_attention(q, k_, v, group, seg, group_size=k,
                                             backend="splash", interpret=True)
  ref = lambda q, k_, v: einsum_attention(q, k_, v, limit, rseg, group, seg)
  mesh = shd.make_mesh("data:2,fsdp:2,tensor:2")
  with jax.set_mesh(mesh):
    hlo = jax.jit(fn).lower(q, kk, v).as_text()
    assert_same_path(fn, ref, q, kk, v)
  assert "shard_map" in hlo or "manual" in hlo  # the per-device region


def test_generation_order_puts_padding_last_then_segment_then_group():
  group = jnp.asarray([[5, 0, 1, 0, 9, 1]], jnp.int32)
  seg = jnp.asarray([[2, 2, 1, 1, 0, 2]], jnp.int32)
  np.testing.assert_array_equal(generation_order(group, seg), [[3, 2, 1, 5, 0, 4]])


def test_kernel_rejects_groupings_that_are_not_block_aligned():
  rng = np.random.default_rng(7)
  group = jnp.asarray([[0, 0, 0, 1, 1, 1, 0, 0]], jnp.int32)  # a document of 6, k = 4
  seg = jnp.asarray([[1, 1, 1, 1, 1, 1, 2, 2]], jnp.int32)
  assert bool(block_aligned(group, seg, 3)[0])  # a partial group may end the row
  assert not bool(block_aligned(group, seg, 4)[0])  # group 1 starts inside block 0
  shifted = jnp.asarray([[0, 0, 0, 1, 1, 0, 0, 0]], jnp.int32)  # doc 1 ends with 2 of 3
  assert not bool(block_aligned(shifted, seg.at[0, 5].set(2), 3)[0])
  q, k, v = qkv(rng, 1, 16, 8)
  with pytest.raises(ValueError, match="chunked"):
    two_stream_attention(q, k, v, group, seg, group_size=4, backend="xla")


def _poisoned(fn):
  """fn with a NaN added to its output: whatever takes this path fails the comparison."""
  return lambda *args, **kwargs: fn(*args, **kwargs) + jnp.nan


def test_model_kernel_path_falls_back_when_groups_are_not_blocks(monkeypatch):
  """attention='kernel' inside the model: block-aligned rows use the kernel; a packed
  row whose documents do not split into whole groups takes the chunked path. Both
  must equal einsum, and the path not meant to run is poisoned with NaN, so each
  case fails unless its own path produced the output."""
  cfg = get_preset("tiny")
  params = meta.unbox(jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0)))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 32)).astype(np.int32)
  kernel_cfg = cfg.replace(attention="kernel", attention_group_size=4)
  for doc_len, path in ((16, "kernel"), (13, "chunked")):  # 16: whole groups of 4; 13: not
    seg = np.where(np.arange(32) < doc_len, 1, 2)[None].repeat(2, 0).astype(np.int32)
    pos = np.where(seg == 1, np.arange(32), np.arange(32) - doc_len).astype(np.int32)
    groups = np.asarray(sample_groups(parse_strategy("perm:4"), jax.random.key(1), seg, pos))
    # Each lambda is traced at once, in this iteration: B023 does not apply.
    want = jax.jit(lambda p: A3LM(cfg).apply(p, tokens, groups, seg, pos)["query"])(params)  # noqa: B023
    with monkeypatch.context() as patch:
      if path == "kernel":
        patch.setattr(attention.chunked, "chunked_attention",
                      _poisoned(attention.chunked.chunked_attention))
      else:
        patch.setattr(attention.kernel, "two_stream_attention",
                      _poisoned(attention.kernel.two_stream_attention))
      got = jax.jit(lambda p: A3LM(kernel_cfg).apply(p, tokens, groups, seg, pos)["query"])(params)  # noqa: B023
    chex.assert_shape(got, want.shape)
    chex.assert_trees_all_close(got, want, atol=1e-5)

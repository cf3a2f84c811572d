"""NLU / NLG paths: masks, memory semantics, scan equivalence."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie3_jax.model import Ernie3, init_memory, recurrence_memory
from ernie3_jax.model.transformer_xl import unstack_scanned_params
from tests import model_testing as mt


def _nlg(cfg, variables, tokens, segs, tasks, memory=None, reset=None):
  return Ernie3(cfg).apply(variables, tokens, segs, tasks, memory, reset,
                           method=Ernie3.nlg_decode)


def _nlu(cfg, variables, tokens, segs, tasks):
  return Ernie3(cfg).apply(variables, tokens, segs, tasks, method=Ernie3.nlu_encode)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_nlg_is_causal(pre_ln):
  cfg = mt.config(pre_layer_norm=pre_ln)
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 2, 12)
  memory = init_memory(cfg, 2)
  t = 6
  changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % (cfg.vocab_size - 1) + 1)
  h1, _ = _nlg(cfg, variables, tokens, segs, tasks, memory)
  h2, _ = _nlg(cfg, variables, changed, segs, tasks, memory)
  np.testing.assert_allclose(h1[:, :t + 1], h2[:, :t + 1], atol=1e-5)
  assert np.abs(np.asarray(h1[:, t + 1:] - h2[:, t + 1:])).max() > 1e-3


def test_nlu_is_bidirectional():
  cfg = mt.config()
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 1, 10)
  base = _nlu(cfg, variables, tokens, segs, tasks)
  for pos in range(10):
    changed = tokens.at[:, pos].set(tokens[:, pos] % (cfg.vocab_size - 1) + 1)
    diff = np.abs(np.asarray(_nlu(cfg, variables, changed, segs, tasks) - base)).max(axis=-1)
    assert (diff > 1e-6).all(), f"changing token {pos} left some outputs unchanged: {diff}"


@pytest.mark.parametrize("memory_len", [5, 9])
def test_previous_layer_memory_equals_one_long_causal_pass(memory_len):
  cfg = mt.config(memory_mode="previous_layer", memory_len=memory_len)
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 2, 10)
  first, second = slice(0, 5), slice(5, 10)
  full, _ = _nlg(cfg, variables, tokens, segs, tasks, init_memory(cfg, 2, 0))
  _, memory = _nlg(cfg, variables, tokens[:, first], segs[:, first], tasks, init_memory(cfg, 2))
  h2, _ = _nlg(cfg, variables, tokens[:, second], segs[:, second], tasks, memory)
  np.testing.assert_allclose(h2, full[:, second], atol=2e-5)


def test_same_layer_memory_holds_each_layers_own_outputs():
  cfg = mt.config(memory_mode="same_layer", memory_len=8, scan_layers=False)
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 2, 6)
  (h, memory), state = Ernie3(cfg).apply(
      variables, tokens, segs, tasks, init_memory(cfg, 2), method=Ernie3.nlg_decode,
      capture_intermediates=lambda mdl, _: mdl.name is not None and mdl.name.startswith("layers_"))
  inter = state["intermediates"]
  for stack_name, path in (("universal", ("universal",)), ("nlg", ("nlg", "stack"))):
    node = inter
    for key in path:
      node = node[key]
    for layer in range(cfg.num_layers if stack_name == "universal" else cfg.nlg_layers):
      layer_out = node[f"layers_{layer}"]["__call__"][0][0]
      np.testing.assert_allclose(memory[stack_name][layer][:, -6:], layer_out, atol=1e-6)
  # The NLG stack's last layer output is the returned hidden state (post-LN).
  np.testing.assert_allclose(memory["nlg"][-1][:, -6:], h, atol=1e-6)
  assert not np.asarray(memory["valid"][:, :2]).any() and np.asarray(memory["valid"][:, 2:]).all()


def test_no_gradient_flows_into_memory():
  cfg = mt.config()
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 2, 6)

  def memory_sum(params):
    _, memory = _nlg(cfg, {"params": params}, tokens, segs, tasks, init_memory(cfg, 2))
    return memory["universal"].sum() + memory["nlg"].sum()

  grads = jax.jit(jax.grad(memory_sum))(variables["params"])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(nn.unbox(grads)))

  def loss_through_incoming_memory(mem):
    h, _ = _nlg(cfg, variables, tokens, segs, tasks, dict(init_memory(cfg, 2), **mem))
    return h.sum()

  _, memory = _nlg(cfg, variables, tokens, segs, tasks, init_memory(cfg, 2))
  g = jax.grad(loss_through_incoming_memory)(
      {"universal": memory["universal"], "nlg": memory["nlg"]})
  assert float(jnp.abs(g["universal"]).max()) == 0.0 and float(jnp.abs(g["nlg"]).max()) == 0.0


@pytest.mark.parametrize("memory_mode", ["same_layer", "previous_layer"])
def test_no_gradient_flows_into_valid_incoming_memory(memory_mode):
  """The memory of a real first segment (valid slots the second segment attends to): the
  second segment's output depends on it, yet no gradient reaches it."""
  cfg = mt.config(memory_mode=memory_mode, memory_len=6)
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 2, 6)
  nxt, nsegs, _ = mt.random_batch(cfg, 2, 6, seed=1)
  _, memory = _nlg(cfg, variables, tokens, segs, tasks, init_memory(cfg, 2))
  assert np.asarray(memory["valid"]).all()

  def second_segment(mem):
    h, _ = _nlg(cfg, variables, nxt, nsegs, tasks, dict(memory, **mem))
    return h

  incoming = {"universal": memory["universal"], "nlg": memory["nlg"]}
  nudged = {k: v * 1.5 for k, v in incoming.items()}
  assert np.abs(np.asarray(second_segment(nudged) - second_segment(incoming))).max() > 1e-3
  g = jax.grad(lambda mem: (second_segment(mem) ** 2).sum())(incoming)
  assert float(jnp.abs(g["universal"]).max()) == 0.0 and float(jnp.abs(g["nlg"]).max()) == 0.0


def test_reset_row_behaves_like_a_fresh_document():
  cfg = mt.config()
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 2, 6)
  _, memory = _nlg(cfg, variables, tokens, segs, tasks, init_memory(cfg, 2))
  nxt, nsegs, _ = mt.random_batch(cfg, 2, 6, seed=1)
  reset = jnp.asarray([True, False])
  h_reset, _ = _nlg(cfg, variables, nxt, nsegs, tasks, memory, reset)
  h_fresh, _ = _nlg(cfg, variables, nxt, nsegs, tasks, init_memory(cfg, 2))
  h_carry, _ = _nlg(cfg, variables, nxt, nsegs, tasks, memory)
  np.testing.assert_allclose(h_reset[0], h_fresh[0], atol=1e-6)
  np.testing.assert_allclose(h_reset[1], h_carry[1], atol=1e-6)
  assert np.abs(np.asarray(h_carry[0] - h_fresh[0])).max() > 1e-4  # memory did matter


def test_reset_rows_clears_hidden_and_validity():
  cfg = mt.config()
  mem = jax.tree_util.tree_map(jnp.ones_like, init_memory(cfg, 3))
  out = recurrence_memory.reset_rows(mem, jnp.asarray([False, True, False]))
  assert not np.asarray(out["valid"][1]).any() and np.asarray(out["valid"][0]).all()
  assert float(jnp.abs(out["universal"][:, 1]).max()) == 0.0
  assert float(out["nlg"][:, 0].min()) == 1.0


@pytest.mark.parametrize("pre_ln", [False, True])
def test_scanned_and_unrolled_stacks_agree(pre_ln):
  scanned_cfg = mt.config(scan_layers=True, pre_layer_norm=pre_ln, remat_policy="dots")
  loop_cfg = mt.config(scan_layers=False, pre_layer_norm=pre_ln, remat_policy="full")
  params = nn.unbox(mt.init_params(scanned_cfg)["params"])
  loop_params = dict(params)
  loop_params["universal"] = unstack_scanned_params(params["universal"], scanned_cfg.num_layers)
  for name in ("nlu", "nlg"):
    loop_params[name] = dict(params[name], stack=unstack_scanned_params(
        params[name]["stack"], scanned_cfg.nlu_layers))
  # The unrolled model must have exactly this parameter structure.
  loop_init = nn.unbox(mt.init_params(loop_cfg)["params"])
  assert (jax.tree_util.tree_structure(loop_init) ==
          jax.tree_util.tree_structure(loop_params))
  tokens, segs, tasks = mt.random_batch(scanned_cfg, 2, 7)
  memory = init_memory(scanned_cfg, 2)

  @functools.partial(jax.jit, static_argnums=1)
  def run(p, cfg):
    def loss(p):
      out, mem = Ernie3(cfg).apply({"params": p}, tokens, segs, tasks, memory)
      return out["mlm_logits"].mean() + out["lm_logits"].mean(), (out, mem)
    return jax.grad(loss, has_aux=True)(p)

  grads_s, (out_s, mem_s) = run(params, scanned_cfg)
  grads_l, (out_l, mem_l) = run(loop_params, loop_cfg)
  for key in out_s:
    np.testing.assert_allclose(out_s[key], out_l[key], atol=2e-5, err_msg=key)
  for key in mem_s:
    np.testing.assert_allclose(mem_s[key], mem_l[key], atol=2e-5, err_msg=key)
  # Gradients agree too (remat must not change them).
  np.testing.assert_allclose(grads_s["universal"]["layers"]["ffn"]["wi"]["kernel"][1],
                             grads_l["universal"]["layers_1"]["ffn"]["wi"]["kernel"], atol=1e-6)
  np.testing.assert_allclose(grads_s["nlg"]["stack"]["layers"]["attention"]["position_bias"][0],
                             grads_l["nlg"]["stack"]["layers_0"]["attention"]["position_bias"],
                             atol=1e-6)


def test_dropout_is_active_only_when_not_deterministic():
  cfg = mt.config()
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 2, 6)
  run = lambda det, mult, seed: Ernie3(cfg).apply(
      variables, tokens, segs, tasks, det, mult, method=Ernie3.nlu_encode,
      rngs={"dropout": jax.random.PRNGKey(seed)})
  base = run(True, 1.0, 0)
  np.testing.assert_allclose(run(False, 0.0, 0), base, atol=1e-6)  # multiplier 0: no dropout
  assert np.abs(np.asarray(run(False, 1.0, 0) - base)).max() > 1e-3
  assert np.abs(np.asarray(run(False, 1.0, 0) - run(False, 1.0, 1))).max() > 1e-3


def test_heads_shapes_and_reorder_classes():
  cfg = mt.config(max_reorder_segments=4, num_labels=3)
  assert cfg.num_reorder_classes == 1 + 2 + 6 + 24
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 2, 6)
  out, _ = Ernie3(cfg).apply(variables, tokens, segs, tasks, init_memory(cfg, 2))
  assert out["mlm_logits"].shape == (2, 6, cfg.vocab_size)
  assert out["lm_logits"].shape == (2, 6, cfg.vocab_size)
  assert out["reorder_logits"].shape == (2, 33)
  assert out["distance_logits"].shape == (2, 3)
  assert out["class_logits"].shape == (2, 3)
  ctoks = jnp.stack([tokens, tokens[::-1]], axis=1)
  scores = Ernie3(cfg).apply(variables, ctoks, jnp.stack([segs, segs], 1), tasks,
                             method=Ernie3.score_choices)
  assert scores.shape == (2, 2)


def test_untied_output_has_its_own_kernel():
  cfg = mt.config(tie_embeddings=False)
  params = nn.unbox(mt.init_params(cfg)["params"])
  assert params["mlm_head"]["output"]["kernel"].shape == (cfg.d_model, cfg.vocab_size)
  assert "output" not in nn.unbox(mt.init_params(mt.config())["params"])["mlm_head"]


def test_bad_config_values_are_named():
  with pytest.raises(ValueError, match="memory_mode"):
    mt.config(memory_mode="cross_layer")
  with pytest.raises(ValueError, match="remat_policy"):
    mt.config(remat_policy="some")
  with pytest.raises(ValueError, match="num_layers"):
    mt.config(num_layers=0)

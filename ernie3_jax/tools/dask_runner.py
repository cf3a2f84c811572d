"""Beam pipelines on a Dask cluster: Beam's DaskRunner with what loses output fixed.

  python -m ernie3_jax.tools.prepare_dumps ... -- \\
      --runner=ernie3_jax.tools.dask_runner.DaskRunner \\
      --dask_client_address=tcp://scheduler:8786

Beam 2.77's own `apache_beam.runners.dask.dask_runner.DaskRunner` fails on both tools'
pipelines (a TypeError in a worker: the count reports and the alignment receive other
steps' elements, reason 4), and on simpler pipelines completes but leaves sinks unwritten
or empty. Four reasons, in its translation (`apache_beam/runners/dask/`):

1. Only one branch runs. `run_pipeline` computes `list(bags.values())[-1]`, the bag of the
   last transform visited; every sink not upstream of it is never executed.
2. Outputs of `finish_bundle` are dropped. `apply_dofn_to_bundle` collects the bundle's
   outputs before `invoke_finish_bundle`, and Beam's file sinks (`WriteToText`,
   `WriteToTFRecord` without a fixed shard count) emit each written shard's name from
   `finish_bundle`. The finalisation step then sees no shard, writes one empty one, and the
   written temporary files stay in `beam-temp-*` folders.
3. Every side input is recomputed, inside the task that reads it (`list(bag)` in
   `DaskBagWindowedIterator`). A sink's side inputs include `initialize_write`, which
   names a fresh `beam-temp-<uuid>` folder on each evaluation, and the write itself; so
   bundles, pre-finalisation and finalisation each work on their own copy.
4. Tagged outputs are merged. A multi-output ParDo's bag holds all its outputs with the tags
   stripped, and every consumer of any one output reads all of them: the dump pipeline's
   "item" consumers would get its count events, malformed-line messages and property
   labels as well.

This runner keeps Beam's options (`--dask_client_address`, `--dask_npartitions`, ...) and
overrides, and translates the pipeline itself: every leaf output is one bag, tagged
outputs are separate bags, a side input is one dask value the reading tasks depend on
(computed once, in the same graph), a bundle's outputs include its `finish_bundle`
outputs, and every bag no transform reads is computed, in one graph. It hands the DoFn
invoker a ParDo's argument placeholders (`transform.args`), as Beam's other runners do,
where Beam's translation hands it `raw_side_inputs`, and it fails the run when the
scheduler cancelled tasks (Beam's result reported DONE for such a run). `Reshuffle`
spreads its input over the cluster (`--dask_npartitions`, default: the cluster's
threads; Beam's is the identity) and a
GroupByKey groups by the key's encoding with Beam's deterministic coder, so keys are
equal exactly when Beam says they are, in whichever worker process they were made (a
key without a deterministic encoding is refused).

Limits: batch pipelines in the global window only; Beam metrics are not collected (the
result's `metrics()` raises, as in Beam's runner; the tools' reports are PCollections,
not metrics); a transform it cannot translate (a `Read`, a splittable or stateful DoFn,
another windowing) is refused by name rather than skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import coders
from apache_beam.pipeline import AppliedPTransform
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import DoFnContext
from apache_beam.runners.common import DoFnInvoker
from apache_beam.runners.common import DoFnSignature
from apache_beam.runners.common import Receiver
from apache_beam.runners.common import _OutputHandler
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import overrides
from apache_beam.transforms import userstate
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindow
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

_GLOBAL = (GlobalWindow(),)


class UnsupportedTransform(NotImplementedError):
  """A transform this runner cannot translate (named, never silently skipped)."""


@dataclasses.dataclass
class _Collect(Receiver):
  """Receives one output (tag None: the main one) of a bundle into a shared list."""
  tag: Any
  out: list

  def receive(self, windowed_value: WindowedValue) -> None:
    self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):

  def __init__(self):
    super().__init__()
    self.out: list = []

  def __missing__(self, tag):
    self[tag] = _Collect(tag, self.out)
    return self[tag]


def _run_bundle(dofn, args, kwargs, label, views, items, *side_values):
  """One partition through a DoFn: [(tag, value)] for every output, finish_bundle's too."""
  receivers = _Receivers()
  handler = _OutputHandler(
      window_fn=GlobalWindows(), main_receivers=receivers[None], tagged_receivers=receivers,
      per_element_output_counter=None, output_batch_converter=None,
      process_yields_batches=False, process_batch_yields_elements=False)
  side_inputs = [SideInputMap(view_class, view_options,
                              [WindowedValue(v, 0, _GLOBAL) for v in values])
                 for (view_class, view_options), values in zip(views, side_values)]
  invoker = DoFnInvoker.create_invoker(
      DoFnSignature(dofn), handler, context=DoFnContext(label, state=None),
      side_inputs=side_inputs, input_args=list(args), input_kwargs=dict(kwargs),
      user_state_context=None, bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
  invoker.invoke_setup()
  invoker.invoke_start_bundle()
  for item in items:
    invoker.invoke_process(WindowedValue(item, 0, _GLOBAL))
  invoker.invoke_finish_bundle()
  invoker.invoke_teardown()
  return receivers.out


def _tagged(pairs, tag):
  return [value for t, value in pairs if t == tag]


def _encode_key(element, coder):
  key, value = element
  if isinstance(value, WindowedValue):  # GroupByKey.ReifyWindows's output
    value = value.value
  return coder.encode(key), (key, value)


def _grouped(group):
  _, members = group
  return members[0][1][0], [value for _, (_, value) in members]


def _concat(partitions):
  return [value for partition in partitions for value in partition]


def _count(partition):
  return [sum(1 for _ in partition)]


class _Translator(PipelineVisitor):
  """Leaf transforms -> dask bags, one per output PCollection."""

  def __init__(self, partitions: int, partition_size: int | None):
    self.partitions, self.partition_size = partitions, partition_size
    self.run_id = uuid.uuid4().hex  # a run's side effects never share keys with another's
    self.bags: dict[pvalue.PCollection, Any] = {}
    self.read: set[pvalue.PCollection] = set()
    self.side_values: dict[pvalue.PCollection, Any] = {}

  def _input(self, pcoll):
    self.read.add(pcoll)
    return self.bags[pcoll]

  def _side_value(self, pcoll):
    """A PCollection's elements as one list: a dask value that every reader depends on, so
    it is computed once, in the same graph as the rest of the pipeline."""
    if pcoll not in self.side_values:
      self.side_values[pcoll] = self._input(pcoll).reduction(list, _concat, split_every=False)
    return self.side_values[pcoll]

  def _set_outputs(self, node: AppliedPTransform, bag) -> None:
    for pcoll in node.outputs.values():
      self.bags[pcoll] = bag

  def visit_transform(self, transform_node: AppliedPTransform) -> None:
    from dask import bag as db  # pylint: disable=g-import-not-at-top
    node, transform = transform_node, transform_node.transform
    inputs = [self._input(p) for p in node.main_inputs.values()
              if isinstance(p, pvalue.PCollection)]
    if isinstance(transform, beam.WindowInto):
      windowfn = transform.get_windowing(()).windowfn
      if not isinstance(windowfn, GlobalWindows):
        raise UnsupportedTransform(f"{node.full_label}: {windowfn!r}; only the global window")
    if isinstance(transform, overrides._Create):  # pylint: disable=protected-access
      values = list(transform.values)
      if self.partition_size:
        bag = db.from_sequence(values, partition_size=self.partition_size)
      else:
        bag = db.from_sequence(values, npartitions=max(1, min(len(values), self.partitions)))
      self._set_outputs(node, bag)
    elif isinstance(transform, overrides._Flatten):  # pylint: disable=protected-access
      self._set_outputs(node, db.concat(inputs) if inputs else db.from_sequence([]))
    elif isinstance(transform, overrides._Reshuffle):  # pylint: disable=protected-access
      (bag,) = inputs
      self._set_outputs(node, bag.repartition(npartitions=max(bag.npartitions,
                                                              self.partitions)))
    elif isinstance(transform, overrides._GroupByKeyOnly):  # pylint: disable=protected-access
      (bag,) = inputs
      coder = coders.FastPrimitivesCoder().as_deterministic_coder(node.full_label)
      self._set_outputs(node, bag.map(_encode_key, coder)
                        .groupby(lambda e: e[0], shuffle="tasks")
                        .map(_grouped))
    elif isinstance(transform, overrides._GroupAlsoByWindow):  # pylint: disable=protected-access
      self._set_outputs(node, inputs[0])  # the global window: the groups as they are
    elif isinstance(transform, beam.WindowInto):
      self._set_outputs(node, inputs[0])  # the global window, checked above
    elif isinstance(transform, beam.ParDo):
      self._par_do(node, transform, inputs)
    else:
      raise UnsupportedTransform(
          f"{node.full_label}: {type(transform).__name__} is not supported on Dask")

  def _par_do(self, node, transform, inputs):
    from dask import bag as db  # pylint: disable=g-import-not-at-top
    from dask._task_spec import Task, TaskRef  # pylint: disable=g-import-not-at-top
    from dask.highlevelgraph import HighLevelGraph  # pylint: disable=g-import-not-at-top
    dofn = transform.dofn
    if userstate.is_stateful_dofn(dofn) or DoFnSignature(dofn).is_splittable_dofn():
      raise UnsupportedTransform(f"{node.full_label}: stateful or splittable DoFn")
    (bag,) = inputs
    views = [(type(si), si._view_options()) for si in node.side_inputs]  # pylint: disable=protected-access
    sides = [self._side_value(si.pvalue) for si in node.side_inputs]
    # The arguments with the side inputs' placeholders, as Beam's other runners pass them.
    bundle = functools.partial(_run_bundle, dofn, transform.args, transform.kwargs,
                               node.full_label, views)
    # The graph is written out (not map_partitions): a dask collection passed as an
    # argument would be finalised, and optimised, separately for each reader, running
    # the side input's producers (a sink's initialize_write, say) once per reader.
    name = f"pardo-{self.run_id}-{len(self.bags)}"
    layer = {(name, i): Task((name, i), bundle, TaskRef((bag.name, i)),
                             *[TaskRef(side.key) for side in sides])
             for i in range(bag.npartitions)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[bag, *sides])
    pairs = db.Bag(graph, name, bag.npartitions)
    for tag, pcoll in node.outputs.items():
      self.bags[pcoll] = pairs.map_partitions(_tagged, tag)

  def terminal_counts(self) -> list:
    """One count per bag no transform reads: computing them runs the whole pipeline."""
    return [bag.map_partitions(_count).sum() for pcoll, bag in self.bags.items()
            if pcoll not in self.read]


class DaskRunnerResult(beam_dask.DaskRunnerResult):
  """Fails when any part of the pipeline did (Beam's result reports DONE when the
  scheduler cancelled the futures, e.g. for lost dependencies), then closes the client."""

  def wait_until_finish(self, duration=None) -> str:
    import dask.distributed as ddist  # pylint: disable=g-import-not-at-top
    from apache_beam.runners.runner import PipelineState  # pylint: disable=g-import-not-at-top
    if PipelineState.is_terminal(self._state):
      return self._state
    try:
      ddist.wait(self.futures, timeout=None if duration is None else duration / 1000)
      for future in self.futures:
        future.result()  # the task's error, or the reason it was cancelled
      self._state = PipelineState.DONE
    except ddist.TimeoutError:
      return self._state  # still running
    except BaseException:
      self._state = PipelineState.FAILED
      raise
    finally:
      if PipelineState.is_terminal(self._state):
        self.client.close()
    return self._state


class DaskRunner(beam_dask.DaskRunner):
  """Runs a batch Beam pipeline on dask.distributed (see the module doc)."""

  def run_pipeline(self, pipeline, options):
    import dask.distributed as ddist  # pylint: disable=g-import-not-at-top
    dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(
        drop_default=True, current_only=True)
    bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)  # pylint: disable=protected-access
    client = ddist.Client(**dask_options)
    threads = sum(client.nthreads().values()) or 1
    pipeline.replace_all(overrides.dask_overrides())
    translator = _Translator(bag_kwargs.get("npartitions") or threads,
                             bag_kwargs.get("partition_size"))
    pipeline.visit(translator)
    # Unoptimised: fusing would give a task shared by several branches one copy per branch.
    futures = client.compute(translator.terminal_counts(), optimize_graph=False)
    return DaskRunnerResult(client, futures)

"""The knowledge study's results: per-cell accuracies, paired bootstrap intervals, a
table and learning curves (see benchmarks/knowledge_study.py for how they are made).

A result line holds one arm x seed: its accuracy per (group, probe) cell at every probed
step, and at the last step the correctness of every item ("0"/"1" per item, in
`study_probes.build_items` order), so arms compare item by item.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from ernie3_jax.evaluation.study_probes import PROBES
from ernie3_jax.runtime import storage

ARM_ORDER = ("text", "triples", "uktp", "misaligned", "uktp_bare")
ARM_NAMES = {"text": "1 text only", "triples": "2 text + triples",
             "uktp": "3 UKTP", "misaligned": "4 UKTP, wrong sentences",
             "uktp_bare": "5 UKTP + bare triples"}
# (group, probe) cells the study's questions read.
KEY_CELLS = (("A", "text_recall"), ("T", "triple_tail"), ("T", "triple_relation"),
             ("K", "text_heldout"), ("T", "in_context_relation"))
# The last two ask what UKTP's deficit against arm 2 is made of: the bare layout
# (uktp_bare - uktp) or the alignment (uktp_bare - triples).
COMPARISONS = (("uktp", "triples"), ("uktp", "misaligned"), ("triples", "text"),
               ("uktp_bare", "uktp"), ("uktp_bare", "triples"))
OPEN_BOOK_CELLS = tuple(f"{g}/in_context_relation" for g in "ATKN")
RECALL_GATE = 0.95  # training recall on A before any transfer figure is read
# Per arm, the cells that ask A's facts in the rows the arm trains them in: every arm
# trains A's text; text + triples trains A's triples alone, UKTP beside the sentence each
# is aligned to, the wrong-sentence control beside another person's sentence, and
# UKTP + bare triples both alone and beside the aligned sentence. The gate
# reads these: an arm that did not fit its own training rows has not been trained long
# enough for its held-out cells to mean anything.
TRAINED_CELLS = {"text": ("A/text_recall",),
                 "triples": ("A/text_recall", "A/triple_tail"),
                 "uktp": ("A/text_recall", "A/aligned_tail"),
                 "misaligned": ("A/text_recall", "A/donor_tail"),
                 "uktp_bare": ("A/text_recall", "A/aligned_tail", "A/triple_tail")}


def read_results(path: str, fingerprint: str | None = None) -> list[dict]:
  """The result lines of `path` (with `fingerprint`, only those of that study setup)."""
  try:
    with storage.open(path, encoding="utf-8") as f:
      lines = [json.loads(l) for l in f if l.strip()]
  except FileNotFoundError:
    return []
  return [l for l in lines if fingerprint is None or l.get("fingerprint") == fingerprint]


def arm_seeds(lines: Sequence[dict], arm: str) -> list[int]:
  """The seeds `arm` has result lines for, in order."""
  return sorted(l["seed"] for l in lines if l["arm"] == arm)


def item_matrix(lines: Sequence[dict], arm: str, cell: str,
                seeds: Sequence[int] | None = None) -> np.ndarray:
  """[seeds, items] correctness of `arm` in `cell` ("G/probe") at the last step (only
  `seeds`, if given)."""
  rows = [np.frombuffer(l["final_correct"][cell].encode(), np.uint8) - ord("0")
          for l in sorted(lines, key=lambda l: l["seed"])
          if l["arm"] == arm and (seeds is None or l["seed"] in seeds)]
  return np.asarray(rows, np.float64)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int = 4000,
                     seed: int = 0) -> tuple[float, float, float]:
  """(mean difference, 2.5% and 97.5% quantiles) of accuracy a - b.

  a and b are [seeds, items] correctness on the same items, row i of both from seed i
  (same corpus, data order and initialisation). Each sample draws seeds, then items, with
  replacement, the same draws for a and b: the interval holds both the item noise and the
  seed-to-seed spread (with one seed, only the items').
  """
  diff = a - b
  rng = np.random.default_rng(seed)
  num_seeds, num_items = diff.shape
  seeds = rng.integers(0, num_seeds, (samples, num_seeds, 1))
  items = rng.integers(0, num_items, (samples, 1, num_items))
  means = diff[seeds, items].mean((1, 2))
  low, high = np.quantile(means, [0.025, 0.975])
  return float(diff.mean()), float(low), float(high)


def cell_stats(lines: Sequence[dict], arm: str, cell: str) -> tuple[float, float, int]:
  """(mean accuracy over seeds, its spread (std over seeds), items per seed)."""
  m = item_matrix(lines, arm, cell)
  per_seed = m.mean(1)
  return float(per_seed.mean()), float(per_seed.std()), m.shape[1]


def table(lines: Sequence[dict], chance: dict[str, float],
          priors: dict[str, float] | None = None,
          text_priors: dict[str, float] | None = None) -> str:
  """Accuracy per cell and arm (mean ± std over seeds), chance, and the verdict rows.

  `priors`: per cell, the accuracy of the KG's statistics alone (relation cells:
  `study_probes.tail_prior`; tail cells: `study_probes.value_prior` over the KG); an arm
  that trains on the KG may reach it on N without any fact of N, so its leak check accepts
  it. `text_priors`: per tail cell, `value_prior` over the training text's facts, which
  every arm trains on."""
  priors = priors or {}
  text_priors = text_priors or {}
  arms = [a for a in ARM_ORDER if any(l["arm"] == a for l in lines)]
  seeds = {a: arm_seeds(lines, a) for a in arms}
  cells = [f"{g}/{p}" for g in "ATKN" for p in PROBES
           if any(f"{g}/{p}" in l["final_correct"] for l in lines)]
  out = ["accuracy at the last step, mean ± std over seeds "
         + ", ".join(f"{a} {seeds[a]}" for a in arms) + " (items per seed in brackets)",
         f"{'cell':26s} {'chance':>7s} " + " ".join(f"{ARM_NAMES[a]:>24s}" for a in arms)]
  for cell in cells:
    stats = [cell_stats(lines, a, cell) for a in arms]
    out.append(f"{cell + f' [{stats[0][2]}]':26s} {chance[cell]:7.3f} "
               + " ".join(f"{m:17.3f} ± {s:.3f}" for m, s, _ in stats))
  out.append("")
  out.append("recall gate: held-out cells are read only where the arm stored what it was "
             "trained on (A's accuracy >= 0.95 in each layout the arm trains A's facts in)")
  for a in arms:
    missing = [c for c in TRAINED_CELLS[a] if c not in cells]
    scores = [(c, cell_stats(lines, a, c)[0]) for c in TRAINED_CELLS[a] if c in cells]
    met = all(s >= RECALL_GATE for _, s in scores) and not missing
    # Rounded down, so a score just under the gate never prints as the gate itself.
    out.append(f"{a:>10s} " + ", ".join(f"{c} {np.floor(s * 1000) / 1000:.3f}"
                                        for c, s in scores)
               + "".join(f", {c} not probed" for c in missing)
               + (" met" if met else " NOT MET"))
  out.append("")
  out.append("paired bootstrap over seeds and items (95% interval of the accuracy "
             "difference; the seeds both arms have)")
  for cell in [f"{g}/{p}" for g, p in KEY_CELLS]:
    for x, y in COMPARISONS:
      if x in arms and y in arms and cell in cells:
        both = sorted(set(seeds[x]) & set(seeds[y]))
        if not both:
          continue
        d, lo, hi = paired_bootstrap(item_matrix(lines, x, cell, both),
                                     item_matrix(lines, y, cell, both))
        out.append(f"{cell:26s} {x:>10s} - {y:<10s} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                   + (f" (seeds {both})" if both != seeds[x] or both != seeds[y] else ""))
  out.append("")
  out.append("leak check: group N within two standard errors of chance or of a prior "
             "from the training data's statistics (the training text's value counts; for "
             "arms trained on the KG, also its tail and value counts) on the closed-book "
             "probes (the in-context probe states the fact in its input, so N there "
             "measures reading the relation off held-out wording alone)")
  for cell in [c for c in cells if c.startswith("N/") and c not in OPEN_BOOK_CELLS]:
    for a in arms:
      m = item_matrix(lines, a, cell)
      acc = float(m.mean())
      # Within two standard errors of a reference (seeds x items counted); only a cell
      # above every reference could be a leak.
      refs = [("chance", chance[cell])]
      if cell in text_priors:
        refs.append(("text value prior", text_priors[cell]))
      if cell in priors and a != "text":
        refs.append(("KG tail prior" if cell.endswith("relation") else "KG value prior",
                     priors[cell]))
      bounds = [(name, p, 2 * np.sqrt(p * (1 - p) / m.size)) for name, p in refs]
      verdict = ("ok" if any(abs(acc - p) <= two_se for _, p, two_se in bounds) else
                 "LEAK?" if all(acc > p for _, p, _ in bounds) else "below chance")
      out.append(f"{cell:26s} {a:>10s} {acc:.3f} ("
                 + ", ".join(f"{name} {p:.3f} ± {two_se:.3f}" for name, p, two_se in bounds)
                 + f") {verdict}")
  return "\n".join(out)


def misses_by_relation(lines: Sequence[dict], relations: Sequence[str],
                       cell: str = "A/text_recall") -> str:
  """Wrong items of `cell` at the last step per arm and relation, summed over seeds.

  `relations`: the relation of each of the cell's items, in result-line order. Read from
  the stored item results (no checkpoint needed), it shows which relations keep an arm
  under the recall gate."""
  arms = [a for a in ARM_ORDER if any(l["arm"] == a and cell in l["final_correct"]
                                      for l in lines)]
  names = list(dict.fromkeys(relations))
  codes = np.array([names.index(r) for r in relations])
  sizes = np.bincount(codes, minlength=len(names))
  out = [f"{cell} misses at the last step by relation, summed over seeds (items per seed "
         "in brackets)",
         "| arm | " + " | ".join(f"{r} [{n}]" for r, n in zip(names, sizes)) + " | all |",
         "|" + " --- |" * (len(names) + 2)]
  for a in arms:
    m = item_matrix(lines, a, cell)
    if m.shape[1] != len(relations):
      raise ValueError(f"{cell}: {a}'s lines have {m.shape[1]} items, the study "
                       f"{len(relations)}")
    per = [int(w) for w in np.bincount(codes, weights=(1 - m).sum(0), minlength=len(names))]
    out.append(f"| {a} | " + " | ".join(str(w) for w in per) + f" | {sum(per)} |")
  return "\n".join(out)


# The rows of the docs' results table: (label, cell); "own rows" is each arm's gate cell
# for its triples (`TRAINED_CELLS`), "training (s)" the runs' training wall time.
SUMMARY_ROWS = (("training (s)", "train_seconds"),
                ("A: text recall (gate 0.95)", "A/text_recall"),
                ("A: triples in the arm's own rows (gate 0.95)", "own rows"),
                ("T -> triple layout: tail", "T/triple_tail"),
                ("T -> triple layout: relation", "T/triple_relation"),
                ("T: relation in context", "T/in_context_relation"),
                ("K -> text cloze, held-out templates", "K/text_heldout"),
                ("N (leak check): triple tail", "N/triple_tail"))


def markdown_summary(lines: Sequence[dict], chance: dict[str, float]) -> str:
  """The key cells as a markdown table, mean ± std over each arm's seeds (a bare value
  where an arm has one seed), for the docs: pasted as printed, so docs and results agree."""
  arms = [a for a in ARM_ORDER if any(l["arm"] == a for l in lines)]

  def spread(mean: float, std: float, seeds: int, digits: int) -> str:
    shown = f"{mean:,.{digits}f}"
    return shown if seeds == 1 else f"{shown} ± {std:,.{digits}f}"

  out = ["| seeds: " + "; ".join(f"{a} {','.join(map(str, arm_seeds(lines, a)))}"
                                 for a in arms) + " | chance | "
         + " | ".join(ARM_NAMES[a] for a in arms) + " |",
         "|" + " --- |" * (len(arms) + 2)]
  for label, cell in SUMMARY_ROWS:
    row = []
    for a in arms:
      runs = [l for l in lines if l["arm"] == a]
      arm_cell = _own_rows(a) if cell == "own rows" else cell
      if arm_cell == "train_seconds":
        seconds = np.array([l["train_seconds"] for l in runs])
        row.append(spread(seconds.mean(), seconds.std(), len(runs), 0))
      elif arm_cell is None or any(arm_cell not in l["final_correct"] for l in runs):
        row.append("(none)")
      else:
        mean, std, _ = cell_stats(lines, a, arm_cell)
        row.append(spread(mean, std, len(runs), 3))
    chance_cell = "A/triple_tail" if cell == "own rows" else cell
    shown = f"{chance[chance_cell]:.3f}" if chance_cell in chance else ""
    out.append(f"| {label} | {shown} | " + " | ".join(row) + " |")
  return "\n".join(out)


def _own_rows(arm: str) -> str | None:
  """The cell asking A's triples in the rows `arm` trains them in (None: text only)."""
  cells = TRAINED_CELLS[arm][1:]
  return cells[0] if cells else None


def figure(lines: Sequence[dict], chance: dict[str, float], path: str, title: str) -> None:
  """Accuracy against step for the key cells and N, every arm, seed range shaded; where
  the lines hold them, A's triples beside a training sentence and in each arm's own
  training rows (the gate's cell)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  has = lambda cell: all(cell in l["final_correct"] for l in lines)
  cells = ([f"{g}/{p}" for g, p in KEY_CELLS] + ["N/triple_tail", "N/text_heldout"]
           + ["A/paired_tail"] * has("A/paired_tail")
           + ["own rows"] * all(has(_own_rows(a)) for a in {l["arm"] for l in lines}
                                if _own_rows(a)))
  fig, axes = plt.subplots(3, 3, figsize=(15, 11), sharex=True)
  for ax, cell in zip(axes.flat, cells):
    for arm in ARM_ORDER:
      runs = [l for l in lines if l["arm"] == arm]
      arm_cell = _own_rows(arm) if cell == "own rows" else cell
      if not runs or arm_cell is None:
        continue
      steps = sorted({int(s) for l in runs for s in l["curve"]})
      acc = np.array([[l["curve"][str(s)][arm_cell] for s in steps] for l in runs])
      color = f"C{ARM_ORDER.index(arm)}"  # one colour per arm in every panel
      ax.plot(steps, acc.mean(0), label=ARM_NAMES[arm], color=color)
      ax.fill_between(steps, acc.min(0), acc.max(0), color=color, alpha=0.2)
    if cell == "own rows":
      ax.axhline(RECALL_GATE, color="grey", linestyle="--", label="recall gate")
      ax.set_title("A: triples in the arm's own training rows")
    else:
      ax.axhline(chance[cell], color="grey", linestyle=":", label="chance")
      if cell == TRAINED_CELLS["text"][0]:  # every arm's first gate cell
        ax.axhline(RECALL_GATE, color="grey", linestyle="--", label="recall gate")
      ax.set_title(cell)
    ax.set_ylim(0, 1)
  for ax in axes[-1]:
    ax.set_xlabel("step")
  for ax in axes.flat[len(cells):]:
    ax.axis("off")
  axes.flat[0].legend(loc="lower right", fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)

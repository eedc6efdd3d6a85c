"""How the examples of one optimizer step become micro-batches: speed without changing what is
learned.

The examples of optimizer step s are fixed by (seed, s) (see `StepBatches`), and the loss is the
exact token mean over all of them, however they are split. So the split is free to chase speed:

- `pad`: the original recipes' way. `micro_batch_size` examples per micro-batch in random order,
  right-padded to the longest. Short examples pay for the long one next to them.
- `grouped`: the step's examples sorted by length and cut into micro-batches under a token budget
  (rows x padded width <= `tokens_per_micro_batch`): many short rows or a few long ones, each
  micro-batch about the same cost, almost no padding.
- `packed`: examples packed first-fit-decreasing into rows of `pack_len` tokens, position ids
  restarting at 0 for each example and no attention mask, so transformers builds a
  block-diagonal causal mask (`find_packed_sequence_indices`): no example attends to another's
  tokens, and the first label of each example is dropped so no loss crosses a boundary. Padding
  is only at row ends. On GPU with varlen flash attention each example costs only its own
  length; with sdpa/eager (CPU) every row pays attention over its whole length. For flash
  attention a packed micro-batch is flattened into one row with explicit sequence boundaries
  (`cu_seq_lens_*`): transformers infers packing from position ids only for a single row, and
  would otherwise run plain causal attention across the examples of each row.

Every rank must run the same number of forward/backward passes (the collectives of FSDP and
ZeRO happen inside them), so the micro-batches of a step are split until their count is a
multiple of the world size, then dealt to ranks largest first, each to the rank with the
fewest padded tokens so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orchestrator.config.schema import BATCHING_MODES
from orchestrator.data.templates import IGNORE_INDEX, Example

PASS_OVERHEAD_DIVISOR = 32
"""Grouping charges each micro-batch budget / this many token slots (bench/results: batching)."""


@dataclass
class MicroBatch:
    """Rows of example indices (into the step's example list). A padded micro-batch has one
    example per row; a packed one may have several."""

    rows: list[list[int]]
    packed: bool

    def slots(self, lengths: list[int]) -> int:
        """Token positions processed: rows x the longest row."""
        return len(self.rows) * max(sum(lengths[i] for i in r) for r in self.rows)


def resolve_mode(mode: str, accelerator: str, attn_implementation: str) -> str:
    """`auto`: packed where attention is varlen (flash_attention_2 on GPU: a packed example
    costs what it would alone), grouped elsewhere (sdpa/eager, and every CPU run, where a packed
    row pays attention over its whole length; bench/results: batching)."""
    if mode != "auto":
        return mode
    if accelerator != "cpu" and attn_implementation == "flash_attention_2":
        return "packed"
    return "grouped"


def default_budget(micro_batch_size: int, longest: int) -> int:
    """Token budget when the job sets none: what the pad mode needs at worst (micro_batch_size
    rows of the longest example), i.e. the memory the original batch size was chosen for. On
    CPU, smaller budgets (1024-4096) were measured too (bench/results, batching): they pad a
    little less but cut long examples into one-row passes, each paying a fixed cost."""
    return micro_batch_size * longest


def plan_step(
    lengths: list[int],
    *,
    mode: str,
    world: int,
    micro_batch_size: int,
    tokens_per_micro_batch: int,
    pack_len: int,
) -> list[list[MicroBatch]]:
    """The micro-batches of each rank for one step whose examples have `lengths`."""
    n = len(lengths)
    if mode == "pad":  # fixed count, file order within the (already shuffled) global batch
        per = micro_batch_size
        if n % (per * world) == 0:  # the configured size: rank r gets micro-batches r, r+W, ...
            mbs = [
                MicroBatch([[i] for i in range(s, min(n, s + per))], False)
                for s in range(0, n, per)
            ]
            return [mbs[r::world] for r in range(world)]
        return _uneven_shares(n, per, world)
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    if mode == "grouped":
        mbs = [
            MicroBatch([[j] for j in order[a:b]], False)
            for a, b in _group_sorted([lengths[i] for i in order], tokens_per_micro_batch)
        ]
    elif mode == "packed":
        rows: list[list[int]] = []
        room: list[int] = []
        for i in order:  # first-fit decreasing
            for r, free in enumerate(room):
                if lengths[i] <= free:
                    rows[r].append(i)
                    room[r] -= lengths[i]
                    break
            else:
                rows.append([i])
                room.append(pack_len - lengths[i])
        per = max(1, tokens_per_micro_batch // pack_len)
        mbs = [MicroBatch(rows[s : s + per], True) for s in range(0, len(rows), per)]
    else:
        raise ValueError(f"unknown batching mode {mode!r}; valid: {BATCHING_MODES[1:]}")
    return _balance(mbs, world, lengths)


def _uneven_shares(n: int, per: int, world: int) -> list[list[MicroBatch]]:
    """A global batch that does not split evenly (an elastic run on fewer workers): rank r
    takes rows r, r+W, ... in micro-batches of at most `per`; ranks with fewer get empty
    passes, so every rank runs the same number of forward/backward passes."""
    shares = [list(range(r, n, world)) for r in range(world)]
    ranks = [
        [MicroBatch([[i] for i in rows[s : s + per]], False) for s in range(0, len(rows), per)]
        for rows in shares
    ]
    passes = max(len(mbs) for mbs in ranks)
    return [mbs + [MicroBatch([], False)] * (passes - len(mbs)) for mbs in ranks]


def _group_sorted(desc: list[int], budget: int) -> list[tuple[int, int]]:
    """Cut lengths sorted longest first into contiguous groups [a, b) that minimise padded slots
    plus a fixed cost per micro-batch (budget // PASS_OVERHEAD_DIVISOR slots: a pass has overheads of its own, and
    under FSDP/ZeRO-3 every pass gathers the parameters), with rows x width <= budget. Exact
    dynamic programme, O(n^2) for the n examples of one step."""
    n, overhead = len(desc), budget // PASS_OVERHEAD_DIVISOR
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for b in range(1, n + 1):
        for a in range(b - 1, -1, -1):
            slots = (b - a) * desc[a]  # the group's first (longest) example sets its width
            if slots > budget and b - a > 1:
                break  # longer groups starting earlier are only wider
            cost = best[a] + slots + overhead
            if cost < best[b]:
                best[b], cut[b] = cost, a
    groups, b = [], n
    while b > 0:
        groups.append((cut[b], b))
        b = cut[b]
    return groups[::-1]


def _balance(mbs: list[MicroBatch], world: int, lengths: list[int]) -> list[list[MicroBatch]]:
    # Split the costliest splittable micro-batch until every rank can get the same count.
    while len(mbs) % world:
        splittable = [m for m in mbs if len(m.rows) > 1]
        if not splittable:
            break
        big = max(splittable, key=lambda m: m.slots(lengths))
        mbs.remove(big)
        half = len(big.rows) // 2
        mbs += [MicroBatch(big.rows[:half], big.packed), MicroBatch(big.rows[half:], big.packed)]
    while len(mbs) % world:  # fewer examples than ranks: an empty pass keeps collectives aligned
        mbs.append(MicroBatch([], False))
    per_rank = len(mbs) // world
    ranks: list[list[MicroBatch]] = [[] for _ in range(world)]
    load = [0] * world
    for m in sorted(mbs, key=lambda m: -(m.slots(lengths) if m.rows else 0)):
        r = min((r for r in range(world) if len(ranks[r]) < per_rank), key=lambda r: load[r])
        ranks[r].append(m)
        load[r] += m.slots(lengths) if m.rows else 0
    return ranks


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padded positions get attention 0 and label -100."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate_micro_batch(
    mb: MicroBatch, examples: list[Example], pad_id: int, fallback: Example, flatten: bool = False
) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch. Padded: input_ids/labels/attention_mask. Packed:
    input_ids/labels/position_ids (no attention mask: transformers reads the example boundaries
    from the restarting position ids). Packed with `flatten` (flash attention): one row of every
    example back to back, no padding, and the boundaries given explicitly as `cu_seq_lens_q/k`
    and `max_length_q/k` (varlen flash attention, no device sync to find them). An empty
    micro-batch is one fully masked row of `fallback` (it trains nothing, but runs the
    collectives)."""
    if not mb.rows:
        n = len(fallback.input_ids)
        return {
            "input_ids": torch.tensor([fallback.input_ids]),
            "labels": torch.full((1, n), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.ones((1, n), dtype=torch.long),
        }
    if not mb.packed:
        return collate([examples[i] for (i,) in mb.rows], pad_id)
    rows = [[examples[i] for i in r] for r in mb.rows]
    if flatten:
        return _flat(rows)
    width = max(sum(len(e.input_ids) for e in r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    # Packed: the row's padding tail is a segment of its own (positions restart there too).
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e.input_ids)
            ids[k, at : at + n] = torch.tensor(e.input_ids)
            labels[k, at : at + n] = torch.tensor(e.labels)
            labels[k, at] = IGNORE_INDEX  # never a target; masks the cross-boundary prediction
            pos[k, at : at + n] = torch.arange(n)
            at += n
        pos[k, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def _flat(rows: list[list[Example]]) -> dict:
    seqs = [e for row in rows for e in row]
    lengths = [len(e.input_ids) for e in seqs]
    ids = torch.tensor([[t for e in seqs for t in e.input_ids]])
    labels = torch.tensor([[t for e in seqs for t in e.labels]])
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    starts = torch.tensor([0] + lengths).cumsum(0)
    labels[0, starts[:-1]] = IGNORE_INDEX  # no target across a boundary
    cu = starts.to(torch.int32)
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": pos,
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
    }

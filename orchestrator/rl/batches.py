"""Steps of preference data for one rank: whole ranked groups (reward models, DPO) or their
prompts (PPO).

A step's groups depend only on (seed, step): every epoch is a fresh permutation of the groups
seeded by (seed, epoch), and step s takes the s-th slice of `groups_per_step`. A resumed stage
sees exactly the groups an uninterrupted one would. Each rank takes its share of the step's
groups and splits it into micro-batches of `micro_groups` groups (all replies of a group stay
in one micro-batch: the losses compare them).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from orchestrator.data.batching import collate
from orchestrator.data.templates import IGNORE_INDEX, Example


def group_rows(group_ids: np.ndarray) -> list[list[int]]:
    """Positions of each group's examples, in order (consecutive runs of the same id)."""
    out: list[list[int]] = []
    last = None
    for i, g in enumerate(group_ids.tolist()):
        if g != last:
            out.append([])
            last = g
        out[-1].append(i)
    return out


def prompt_ids(e: Example) -> list[int]:
    """The prompt part of a reply example: the tokens before its first trained label."""
    first = next((i for i, x in enumerate(e.labels) if x != IGNORE_INDEX), len(e.labels))
    return list(e.input_ids[:first])


class GroupBatches:
    """The ranked groups of each step, for one rank (see the module docstring)."""

    def __init__(
        self,
        examples: Sequence[Example],
        group_ids: np.ndarray,
        *,
        groups_per_step: int,
        micro_groups: int,
        world_size: int,
        rank: int,
        seed: int,
        pad_id: int,
        offset: int = 0,
    ) -> None:
        self.examples = examples
        self.offset = offset
        """Added to positions in `examples` to make the `rows` ids of micro-batches (DPO's
        cached reference log-probs index the training set, then the held-out set)."""
        self.groups = group_rows(group_ids)
        self.group_ids = [int(group_ids[rows[0]]) for rows in self.groups]
        """The prepared data's id of each group (prompt data: the index of its answer)."""
        self.groups_per_step = groups_per_step
        self.micro_groups = micro_groups
        self.world, self.rank, self.seed, self.pad_id = world_size, rank, seed, pad_id
        if groups_per_step % (micro_groups * world_size):
            raise ValueError(
                f"{groups_per_step} groups per step do not split into micro-batches of "
                f"{micro_groups} on {world_size} workers"
            )
        self.steps_per_epoch = len(self.groups) // groups_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.groups)} training groups are fewer than one step's "
                f"train.global_batch_size={groups_per_step}: lower it or add data"
            )
        self._perm_cache: tuple[int, list[int]] | None = None
        lengths = examples.lengths() if hasattr(examples, "lengths") else None
        self._lengths = (
            [int(n) for n in lengths] if lengths is not None
            else [len(e.input_ids) for e in examples]
        )  # fmt: skip

    def _permutation(self, epoch: int) -> list[int]:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            perm = list(range(len(self.groups)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(perm)
            self._perm_cache = (epoch, perm)
        return self._perm_cache[1]

    def step_groups(self, step: int) -> list[int]:
        """The global batch of step `step`: group indices, all ranks."""
        epoch, at = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        return perm[at * self.groups_per_step : (at + 1) * self.groups_per_step]

    def rank_groups(self, step: int) -> list[int]:
        share = self.groups_per_step // self.world
        return self.step_groups(step)[self.rank * share : (self.rank + 1) * share]

    def replies(self, group: int) -> list[Example]:
        return [self.examples[i] for i in self.groups[group]]

    def collate_groups(self, chunk: list[int]) -> dict[str, torch.Tensor]:
        """One micro-batch of whole groups: padded replies, `group_sizes`, and `rows` (each
        reply's position in the examples, + offset)."""
        mb = collate([e for g in chunk for e in self.replies(g)], self.pad_id)
        mb["group_sizes"] = torch.tensor([len(self.groups[g]) for g in chunk])
        mb["rows"] = torch.tensor([self.offset + i for g in chunk for i in self.groups[g]])
        return mb

    def step(self, step: int) -> tuple[list[dict[str, torch.Tensor]], int]:
        """This rank's micro-batches of step `step` (each with `group_sizes`), and the number of
        groups in the global batch."""
        mine = self.rank_groups(step)
        out = [
            self.collate_groups(mine[i : i + self.micro_groups])
            for i in range(0, len(mine), self.micro_groups)
        ]
        return out, self.groups_per_step

    def tokens(self, step: int) -> tuple[int, int]:
        """(real tokens, padded slots) of the global batch of `step`."""
        real = padded = 0
        groups = self.step_groups(step)
        for r in range(self.world):
            share = self.groups_per_step // self.world
            mine = groups[r * share : (r + 1) * share]
            for i in range(0, len(mine), self.micro_groups):
                lens = [self._lengths[j] for g in mine[i : i + self.micro_groups]
                        for j in self.groups[g]]  # fmt: skip
                real += sum(lens)
                padded += max(lens) * len(lens)
        return real, padded

    def prompts(self, step: int) -> list[list[int]]:
        """PPO: this rank's prompts of step `step` (the prompt of each group's first reply)."""
        return [prompt_ids(self.examples[self.groups[g][0]]) for g in self.rank_groups(step)]

    def rank_group_ids(self, step: int) -> list[int]:
        """This rank's groups of step `step` as the prepared data's group ids."""
        return [self.group_ids[g] for g in self.rank_groups(step)]

    def best_replies(self, step: int) -> list[Example]:
        """PPO's pretraining mix: this rank's best-ranked replies of step `step`."""
        return [self.examples[self.groups[g][0]] for g in self.rank_groups(step)]

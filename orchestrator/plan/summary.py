"""What a pretraining run reports at its end: planned vs trained tokens, tokens per parameter,
passes over the corpus, and the scaling-law fit's loss for that size and data."""

from __future__ import annotations

from orchestrator.plan.scaling import FITS


def pretrain_summary(
    n_params: int, tokens_planned: float, tokens_trained: int, data_epochs: float
) -> dict[str, float]:
    trained = max(1, tokens_trained)
    return {
        "pretrain/tokens_planned": float(tokens_planned),
        "pretrain/tokens_trained": float(trained),
        "pretrain/tokens_per_param": trained / n_params,
        # The fit is of 70M-16B-parameter runs on MassiveText: outside that range (or on
        # another corpus and tokenizer) it ranks sizes, it does not forecast this loss.
        "pretrain/predicted_loss_epoch_fit": FITS["epoch"].loss(n_params, trained),
        "pretrain/fit_in_range": float(7e7 <= n_params <= 1.6e10),
        "pretrain/data_epochs": data_epochs,
    }

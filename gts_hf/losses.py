"""The losses of GTS's recipe: R-Drop, mixup, supervised contrastive learning (optionally kNN-expanded), and the
student's distillation from a teacher's soft labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target distribution (mixup targets, teacher soft labels)."""
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


def distillation_loss(logits: torch.Tensor, teacher_probabilities: torch.Tensor,
                      temperature: float = 2.0) -> torch.Tensor:
    """T² · KL(teacher_T ‖ student_T): both distributions softened at temperature T (the teacher's from its
    probabilities, ``p^(1/T)`` renormalised), scaled by T² so the gradient does not shrink with T."""
    teacher_log = F.log_softmax(teacher_probabilities.clamp_min(1e-8).log() / temperature, dim=-1)
    student_log = F.log_softmax(logits / temperature, dim=-1)
    return F.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean") * temperature ** 2


def rdrop_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Symmetric KL between the predictions of two dropout passes over the same batch (R-Drop)."""
    log_a, log_b = logits_a.log_softmax(-1), logits_b.log_softmax(-1)
    forward = F.kl_div(log_a, log_b, log_target=True, reduction="batchmean")
    backward = F.kl_div(log_b, log_a, log_target=True, reduction="batchmean")
    return (forward + backward) / 2


def mixup(features: torch.Tensor, targets: torch.Tensor, alpha: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each row with a random partner: returns mixed features, mixed targets and the partner order.

    ``features`` may carry extra columns (e.g. the pair similarity); targets are one-hot or soft distributions.
    """
    weight = torch.distributions.Beta(alpha, alpha).sample((len(features), 1)).to(features)
    weight = torch.maximum(weight, 1 - weight)  # keep each row closer to itself
    partner = torch.randperm(len(features), generator=generator, device="cpu").to(features.device)
    mixed = weight * features + (1 - weight) * features[partner]
    mixed_targets = weight * targets + (1 - weight) * targets[partner]
    return mixed, mixed_targets, partner


def supervised_contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    bank: torch.Tensor | None = None,
    bank_labels: torch.Tensor | None = None,
    bank_positives: int | None = None,
    bank_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """SupCon over L2-normalised embeddings: same-label rows are positives, the rest negatives.

    With a memory ``bank`` (detached embeddings of the whole training set), each anchor also contrasts against the
    bank: its ``bank_positives`` nearest same-label bank entries are extra positives (the kNN-expanded positives of
    GTS), every other-label entry an extra negative; ``bank_ids`` (each anchor's own row in the bank) keeps an anchor
    from counting its own bank entry. Anchors with no positive are skipped.
    """
    similarities = embeddings @ embeddings.T / temperature
    positives = labels.unsqueeze(0) == labels.unsqueeze(1)
    self_mask = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives = positives & ~self_mask
    valid = ~self_mask
    if bank is not None and bank_labels is not None:
        bank_similarities = embeddings @ bank.T / temperature
        bank_positive = _nearest_same_label(bank_similarities, labels, bank_labels, bank_positives)
        bank_valid = torch.ones_like(bank_positive)
        if bank_ids is not None:
            bank_valid[torch.arange(len(labels), device=labels.device), bank_ids] = False
        similarities = torch.cat([similarities, bank_similarities], dim=1)
        positives = torch.cat([positives, bank_positive & bank_valid], dim=1)
        valid = torch.cat([valid, bank_valid], dim=1)
    similarities = similarities.masked_fill(~valid, float("-inf"))
    log_probs = similarities.log_softmax(dim=1).masked_fill(~valid, 0.0)
    counts = positives.sum(1)
    has_positive = counts > 0
    if not has_positive.any():
        return embeddings.sum() * 0.0
    per_anchor = (log_probs * positives).sum(1)[has_positive] / counts[has_positive]
    return -per_anchor.mean()


def _nearest_same_label(similarities: torch.Tensor, labels: torch.Tensor, bank_labels: torch.Tensor,
                        top: int | None) -> torch.Tensor:
    same = labels.unsqueeze(1) == bank_labels.unsqueeze(0)
    if top is None or top >= same.shape[1]:
        return same
    ranked = similarities.detach().masked_fill(~same, float("-inf"))
    nearest = ranked.topk(min(top, same.shape[1]), dim=1).indices
    chosen = torch.zeros_like(same)
    chosen.scatter_(1, nearest, True)
    return chosen & same


def pairwise_cosine_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss over every pair of a batch: the cosine of two L2-normalised embeddings is pulled
    to 1 for the same label and to 0 otherwise (squared error). Same-label and other-label pairs are averaged apart
    and weighed equally, since a few-shot batch holds far more of the latter."""
    cosines = embeddings @ embeddings.T
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    upper = torch.ones_like(same).triu(diagonal=1)
    terms = []
    for mask, target in ((same & upper, 1.0), (~same & upper, 0.0)):
        if mask.any():
            terms.append((cosines[mask] - target).pow(2).mean())
    return torch.stack(terms).mean() if terms else embeddings.sum() * 0.0

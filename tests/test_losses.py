"""The recipe's losses behave as their definitions say."""

import torch
import torch.nn.functional as F

from gts_hf.losses import mixup, pairwise_cosine_loss, rdrop_loss, soft_cross_entropy, supervised_contrastive_loss


def test_rdrop_is_zero_for_identical_predictions_and_positive_otherwise():
    logits = torch.randn(4, 3)
    assert rdrop_loss(logits, logits).abs() < 1e-6
    assert rdrop_loss(logits, torch.randn(4, 3)) > 0


def test_soft_cross_entropy_matches_hard_cross_entropy_on_one_hot_targets():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(soft_cross_entropy(logits, F.one_hot(labels, 4).float()), F.cross_entropy(logits, labels))


def test_mixup_keeps_rows_closer_to_themselves():
    features, targets = torch.eye(4), torch.eye(4)
    mixed, mixed_targets, partner = mixup(features, targets, alpha=0.4, generator=torch.Generator().manual_seed(0))
    assert mixed.shape == (4, 4) and torch.allclose(mixed_targets.sum(1), torch.ones(4))
    own = mixed_targets[torch.arange(4), torch.arange(4)]
    assert torch.all((own >= 0.5) | (partner == torch.arange(4)))


def test_contrastive_loss_is_lower_when_classes_are_clustered():
    labels = torch.tensor([0, 0, 1, 1])
    clustered = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]]), dim=-1)
    mixed = F.normalize(torch.tensor([[1.0, 0.1], [-1.0, 0.1], [1.0, -0.1], [-1.0, -0.1]]), dim=-1)
    assert supervised_contrastive_loss(clustered, labels) < supervised_contrastive_loss(mixed, labels)


def test_contrastive_bank_excludes_the_anchor_itself():
    embeddings = F.normalize(torch.randn(3, 8), dim=-1)
    labels = torch.tensor([0, 1, 2])  # no in-batch positive: only the bank can supply one
    bank, bank_labels = embeddings.clone(), labels.clone()
    loss_without_self = supervised_contrastive_loss(embeddings, labels, bank=bank, bank_labels=bank_labels,
                                                    bank_positives=1, bank_ids=torch.arange(3))
    assert loss_without_self == 0  # the only same-label entry is the anchor itself, which is excluded
    extra = torch.cat([bank, F.normalize(torch.randn(3, 8), dim=-1)])
    loss = supervised_contrastive_loss(embeddings, labels, bank=extra, bank_labels=torch.cat([labels, labels]),
                                       bank_positives=2, bank_ids=torch.arange(3))
    assert torch.isfinite(loss) and loss > 0


def test_pairwise_cosine_loss_is_zero_for_identical_same_label_and_orthogonal_other_label_rows():
    labels = torch.tensor([0, 0, 1, 1])
    ideal = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert pairwise_cosine_loss(ideal, labels).abs() < 1e-6
    collapsed = F.normalize(torch.ones(4, 2), dim=-1)  # every pair at cosine 1: the other-label pairs cost 1
    assert torch.isclose(pairwise_cosine_loss(collapsed, labels), torch.tensor(0.5))


def test_pairwise_cosine_loss_weighs_same_and_other_label_pairs_equally():
    labels = torch.tensor([0, 0, 1, 2, 3])  # one same-label pair, nine other-label pairs
    rows = F.normalize(torch.randn(5, 8), dim=-1)
    cosines = rows @ rows.T
    same = (cosines[0, 1] - 1).pow(2)
    other = torch.stack([cosines[i, j].pow(2) for i in range(5) for j in range(i + 1, 5) if (i, j) != (0, 1)]).mean()
    assert torch.isclose(pairwise_cosine_loss(rows, labels), (same + other) / 2)

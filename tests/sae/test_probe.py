import torch

from sae.probe import LatentDetectorStats, best_threshold, type_targets


def test_best_threshold_separates_a_separable_set():
    scores = torch.tensor([0.9, 0.8, 0.3, 0.1])
    truth = torch.tensor([True, True, False, False])
    threshold = best_threshold(scores, truth)
    assert torch.equal(scores > threshold, truth)


def test_detector_stats_score_a_perfect_latent_f1_one():
    labels = torch.tensor([0, 1, 1, 0, 2], dtype=torch.int8)  # 1 = email, 2 = card
    acts = torch.zeros(5, 3)
    acts[1:3, 0] = 1.0  # latent 0 fires exactly on the emails
    acts[:, 1] = 1.0  # latent 1 fires everywhere
    stats = LatentDetectorStats(3, torch.device("cpu"))
    stats.add(acts, labels)
    f1 = stats.f1()
    assert f1[0, 0] == 1.0 and f1[1, 0] < 1.0
    assert type_targets(labels)[:, -1].tolist() == [False, True, True, False, True]

import torch

from resnets.train.stats import RunningStats


def test_update_counts_losses_errors_and_the_first_non_finite_step():
    stats = RunningStats.zeros(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    stats.update(0, torch.tensor(0.5), logits, torch.tensor([0, 0, 0]))  # one error of three
    stats.update(1, torch.tensor(float("nan")), logits, torch.tensor([1, 1, 1]))  # two errors
    stats.update(2, torch.tensor(float("inf")), logits, torch.tensor([0, 1, 0]))  # none
    assert stats.window().tolist()[1:] == [3.0, 9.0, 3.0]
    assert int(stats.first_bad) == 2  # step 1 (0-based) was the first non-finite one
    assert stats.warmup_window().tolist() == [3.0, 9.0]
    stats.reset_window()
    assert stats.window().tolist() == [0.0] * 4 and stats.warmup_window().tolist() == [3.0, 9.0]


def test_state_dict_keeps_the_original_checkpoint_encoding():
    # Checkpoints written before RunningStats existed hold exactly these three tensors.
    old = {"window": torch.tensor([1.5, 2.0, 256.0, 2.0], dtype=torch.float64),
           "first_bad": torch.tensor(0.0, dtype=torch.float64),
           "warmup_window": torch.tensor([7.0, 128.0], dtype=torch.float64)}
    stats = RunningStats.zeros(torch.device("cpu"))
    stats.load_state_dict(old)
    assert float(stats.loss_sum) == 1.5 and float(stats.images) == 256 and float(stats.warmup_errors) == 7
    again = stats.state_dict()
    assert set(again) == set(old)
    for key in old:
        assert torch.equal(again[key], old[key]) and again[key].dtype == torch.float64

import io
import itertools

import torch

from sae.config import SAEConfig, TrainConfig
from sae.model import SparseAutoencoder
from sae.trainer import SAETrainer, lr_factor


def test_topk_has_exactly_k_active_and_unit_norm_decoder_from_encoder_transpose():
    sae = SparseAutoencoder(16, 64, "topk", k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sae.W_enc, sae.W_dec)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64))
    x = torch.randn(32, 16) + 3.0
    out = sae(x)
    assert out.x_hat.shape == (32, 16) and out.indices is not None
    assert ((sae.encode(x) > 0).sum(1) <= 5).all()
    assert (sae.encode(x) != 0).sum(1).max() == 5


def test_auxk_loss_only_reaches_dead_latents():
    torch.manual_seed(0)
    sae = SparseAutoencoder(16, 64, "topk", k=4, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[40:] = True
    out = sae(torch.randn(128, 16), dead, aux_k=8)
    assert out.aux_loss > 0
    out.aux_loss.backward()
    live_rows = ~dead
    assert sae.W_dec.grad[live_rows].abs().max() == 0
    assert sae.W_enc.grad[live_rows].abs().max() == 0
    assert sae.W_dec.grad[dead].abs().max() > 0 and sae.W_enc.grad[dead].abs().max() > 0


def test_folded_export_reconstructs_raw_activations_like_the_trained_sae():
    sae = SparseAutoencoder(8, 32, "topk", k=4, generator=torch.Generator().manual_seed(2))
    x = torch.randn(50, 8) * 7
    sae.norm_scale.fill_(0.3)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(8))
    exported = SparseAutoencoder.from_folded(sae.folded_state(), "topk", 4)
    assert torch.allclose(exported(x).x_hat, sae(x).x_hat, atol=1e-4)


def _trainer(kind="topk", **train):
    sae_cfg = (
        SAEConfig(n_latents=128, k=8, aux_k=16)
        if kind == "topk"
        else SAEConfig(kind="relu", n_latents=128)
    )
    cfg = TrainConfig(total_tokens=256 * 40, batch_tokens=256, lr=3e-3, warmup_steps=2, **train)
    return SAETrainer(sae_cfg, cfg, 32, torch.device("cpu"))


def _data(seed=0, n=256 * 40):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(200, 32, generator=g)
    codes = (torch.rand(n, 200, generator=g) < 0.03).float() * torch.rand(n, 200, generator=g)
    return codes @ features


def test_training_lowers_fvu_and_keeps_decoder_unit_norm():
    for kind in ("topk", "relu"):
        trainer = _trainer(kind)
        data = _data()
        trainer.init_from_data(data[:2048])
        first = trainer.step(data[:256]).fvu
        for batch in data[256:].split(256):
            last = trainer.step(batch)
        assert last.fvu < 0.6 * first, kind
        assert torch.allclose(trainer.sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)
        assert last.grad_norm > 0 and 0 < last.l0 <= 128


def test_gradient_accumulation_matches_one_big_batch():
    data = _data(1, 256 * 6)
    whole, split = _trainer(), _trainer(grad_accum_steps=4)
    for trainer in (whole, split):
        trainer.init_from_data(data)
        for batch in data.split(256):
            trainer.step(batch)
    assert torch.allclose(whole.sae.W_dec, split.sae.W_dec, atol=1e-5)


def test_trainer_state_round_trip_continues_bit_identically():
    data = _data(2, 256 * 10)
    a = _trainer()
    a.init_from_data(data)
    for batch in data[: 256 * 5].split(256):
        a.step(batch)
    saved = io.BytesIO()
    torch.save(a.state_dict(), saved)
    saved.seek(0)
    b = _trainer()
    b.load_state_dict(torch.load(saved, weights_only=True))
    for batch in data[256 * 5 :].split(256):
        a.step(batch)
        b.step(batch)
    for name, tensor in a.sae.state_dict().items():
        assert torch.equal(tensor, b.sae.state_dict()[name]), name


def test_lr_schedule_warms_up_holds_and_decays():
    cfg = TrainConfig(
        total_tokens=100 * 4096, warmup_steps=10, decay_start_frac=0.8, lr_end_frac=0.1
    )
    factors = [lr_factor(step, cfg) for step in range(100)]
    assert factors[0] == 0.1 and factors[9] == 1.0 and factors[50] == 1.0
    assert factors[80] == 1.0 and factors[99] < 0.15
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))

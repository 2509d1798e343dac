"""Sparse autoencoders: models, activations, trainer, evals. Usable alone: `python -m sae`.

The fleet calls `sae.run.TrainingRun` (GPU side) and `sae.checkpoint.latest_valid_checkpoint` /
`verify_checkpoint` (control plane). This package init, `sae.config`, `sae.checkpoint`,
`sae.pii`, `sae.corpus`, `sae.plots` and `sae.errors` import no torch.
"""

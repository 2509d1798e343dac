"""Sparse autoencoders: models, activations, trainer, evals. Usable alone: `python -m sae`.

The fleet calls `sae.run.TrainingRun` (GPU side), `sae.checkpoint.latest_valid_checkpoint` /
`verify_checkpoint` (control plane) and writes its files through `sae.atomic_files`. This package
init, `sae.atomic_files`, `sae.config`, `sae.checkpoint`, `sae.pii`, `sae.corpus`, `sae.plots`
and `sae.errors` import no torch.
"""

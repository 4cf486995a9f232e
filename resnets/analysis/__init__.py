"""Reproducing the paper's tables and figures: architecture tables, training curves, layer
responses (Fig. 7) and the `resnets reproduce` experiments with their reports."""

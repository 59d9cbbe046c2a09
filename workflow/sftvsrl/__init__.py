"""sftvsrl: reproduce and extend "SFT Memorizes, RL Generalizes" (Chu et al. 2025)."""

__version__ = "0.1.0"

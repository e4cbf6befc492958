"""vlmq: VLM Q-Learning workbench (Advantage-Filtered SFT with a per-token critic)."""

__version__ = "0.1.0"

"""vlmq: VLM Q-Learning workbench (Advantage-Filtered SFT with a per-token critic).

Importing the package registers every task's gymnasium id (``vlmq/<Name>-v0``) and nothing heavier.
"""

from vlmq_core.envs import register_envs

__version__ = "0.1.0"

register_envs()

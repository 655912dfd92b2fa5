"""Config / CLI dtype names -> torch dtypes (model weights, rollout history, reward models)."""
from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

"""minigpt: GPT-2 from first principles in NumPy, every backward written by hand.

The public API (see README.md):

    tok = minigpt.Tokenizer.gpt2()
    model = minigpt.GPTModel(minigpt.GPTConfig(...), seed=123, dtype=np.float32)
    logits = model.forward(idx)
    loss, grads = model.loss_and_grads(idx, targets)
"""

__version__ = "0.1.0"

# --- core (config, model, gradient checks) ---
from minigpt.config import (  # noqa: F401
    GPT_CONFIG_124M,
    GPT_CONFIG_LARGE,
    GPT_CONFIG_MEDIUM,
    GPT_CONFIG_XL,
    PRETRAINED_CONFIGS,
    GPTConfig,
    model_configs,
)
from minigpt.model import GPTModel  # noqa: F401, E402
from minigpt.inference.kv_cache import KVCache  # noqa: F401, E402

# --- tokenizer and data ---
from minigpt.tokenizer import Tokenizer  # noqa: F401, E402
from minigpt.tokenizer.simple import SimpleTokenizerV1, SimpleTokenizerV2  # noqa: F401, E402
from minigpt.training.data import (  # noqa: F401, E402
    DataLoader,
    GPTDatasetV1,
    create_dataloader_v1,
    train_val_split,
    windows,
)

# --- pretrained weights ---
from minigpt.weights.pretrained import from_pretrained, load_model, save_pretrained  # noqa: F401, E402

# --- training and generation ---
from minigpt.training.optim import AdamW, clip_grad_norm_, grad_norm, lr_at  # noqa: F401, E402
from minigpt.inference.generate import generate  # noqa: F401, E402
from minigpt.training.loop import TrainSettings, train  # noqa: F401, E402

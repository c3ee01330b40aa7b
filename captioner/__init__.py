"""captioner: image captioning after Show, Attend and Tell (Xu et al., 2015).

`import captioner` stays cheap: plotting, evaluation and torchvision load only where used.
"""

from .beam import Caption, beam_search
from .checkpoint import CheckpointError, load_captioner
from .config import ModelConfig, TrainConfig
from .model import Captioner
from .vocab import Vocabulary

__version__ = "0.1.0"
__all__ = ["Caption", "Captioner", "CheckpointError", "ModelConfig", "TrainConfig", "Vocabulary", "beam_search",
           "load_captioner"]

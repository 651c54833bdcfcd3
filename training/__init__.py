"""Turn a folder of labelled photos into an exported fastai learner (no web code here)."""
import warnings

# fastai's layers module decorates two activations with torch.jit.script at import, which torch 2.14 deprecates:
# the warning is about fastai's code, not ours, and would open every command's output. Only that one is hidden.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

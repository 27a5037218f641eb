"""The CLEF model factory: open_clip architectures, small CPU configs, and the weight formats people have.

``create(arch, weights, device)`` builds an open_clip CLIP model from a weights reference parsed by
:func:`clefctl.weights.reference.parse_weights` and loads weights detected by content, not by file
name (:mod:`clefctl.weights.files`):

* a FaRL release file (``{"state_dict": ...}`` with OpenAI-CLIP key names plus masked-image-modelling
  extras, which are dropped with a note); FaRL was trained with QuickGELU, which is switched on;
* an OpenAI CLIP state dict or TorchScript archive (QuickGELU as well);
* an open_clip checkpoint (``state_dict``, possibly ``module.``-prefixed) or a ``.safetensors`` file;
* a clefctl checkpoint (written by :func:`save_checkpoint`; carries its architecture);
* a registry name such as ``farl-ep64`` (:mod:`clefctl.weights.registry`; downloaded when missing);
* an open_clip pretrained tag such as ``laion2b_s34b_b88k`` (needs internet or a warm cache).

Every ``torch.load`` uses ``weights_only=True``; a file that needs arbitrary unpickling is refused
unless ``trust_checkpoint=True`` (``--trust-checkpoint`` on the command line).

Example::

    >>> from clefctl.model import create
    >>> m = create("clef-tiny")                       # random init, seed 0
    >>> m.encode_texts(["a photo of a person with lip corner puller."]).shape
    torch.Size([1, 128])
"""

from clefctl.model.configs import CONV_STEMS, _add_stem, conv_stem  # noqa: F401
from clefctl.model.factory import (CHECKPOINT_FORMAT, ClefModel, create, resolve_device,  # noqa: F401
                                   save_checkpoint)
from clefctl.model.formats import LoadReport  # noqa: F401
# the weight files, their formats and the architectures they imply are the weights floor's
from clefctl.weights.archs import (CONFIG_DIR, clef_architectures, infer_architectures,  # noqa: F401
                                   list_architectures, register_configs, state_dict_signature)
from clefctl.weights.digest import sha256_file  # noqa: F401
from clefctl.weights.files import read_weights_file  # noqa: F401
from clefctl.model.text import encode_text_trimmed  # noqa: F401
from clefctl.model.inference import ImageEncoder, cpu_has_native_bf16, inference_dtype  # noqa: F401

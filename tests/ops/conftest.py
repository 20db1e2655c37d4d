import os

import torch

# Triton kernels run on CPU tensors under the interpreter; it must be on before they are decorated.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
